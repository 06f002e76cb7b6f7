"""The CLI's delayed progress bar stays silent for quick work and appears for slow work."""

from __future__ import annotations

import pytest

from exchange.cli import output


def test_quick_work_shows_no_bar():
    with output.DelayedProgress("hashing", 100) as progress:
        progress.advance(100)
        assert progress._progress is None


def test_slow_work_starts_a_bar_on_stderr(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(output.DelayedProgress, "DELAY_SECONDS", 0.0)
    with output.DelayedProgress("hashing", 100) as progress:
        progress.advance(40)
        assert progress._progress is not None
        assert progress._progress.console is output.stderr
        task = progress._progress.tasks[0]
        assert (task.description, task.completed, task.total) == ("hashing", 40, 100)


def test_messages_are_never_read_as_markup(capsys: pytest.CaptureFixture[str]):
    assert output.fail("file [red]x[/] and [/unbalanced] kept as given") == 1
    assert (
        capsys.readouterr().err.strip() == "error: file [red]x[/] and [/unbalanced] kept as given"
    )
    output.stdout.print("case ref [bold]TH-1[/bold]")
    assert capsys.readouterr().out.strip() == "case ref [bold]TH-1[/bold]"
