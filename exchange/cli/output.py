"""Shared terminal output for CLI commands: consoles, errors, and a progress bar that waits a second."""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# markup=False: case refs, file names and messages are printed as given, never read as rich
# markup (a name holding "[red]" would be mangled, and an unbalanced "[/x]" would crash).
stdout = Console(highlight=False, soft_wrap=True, markup=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


class CommandError(Exception):
    """A command failed for a reason the user should read; exit with `exit_code`."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def fail(message: str, *, code: int = 1) -> int:
    """Print `error: message` to stderr and return `code`."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    return code


def print_json(obj: Any) -> None:
    """Machine-readable output on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


class DelayedProgress:
    """A byte progress bar on stderr that appears only once the work has taken over a second."""

    DELAY_SECONDS = 1.0

    def __init__(self, description: str, total: int) -> None:
        self._description = description
        self._total = total
        self._done = 0
        self._started = time.monotonic()
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> DelayedProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, n: int) -> None:
        """Count `n` more bytes done."""
        self._done += n
        if self._progress is None:
            if time.monotonic() - self._started < self.DELAY_SECONDS:
                return
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=stderr,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._description, total=self._total)
        self._progress.update(self._task, completed=self._done)
