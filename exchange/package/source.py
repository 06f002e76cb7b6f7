"""Read-only views of a package on disk: a directory tree or a tar archive of the same tree.

Both refuse anything that could read outside the package: links, device files and names
that escape the root are errors, never followed.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from exchange.errors import InvalidInputError, VerificationError
from exchange.package.paths import path_problem

MANIFEST_NAME = "manifest.json"
JWS_NAME = "manifest.jws"
DATA_DIR = "data"
# A manifest larger than this is not a manifest: 100k files at ~400 bytes each fits well.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


class PackageSource(Protocol):
    """What the verifier needs from a package, wherever it lies."""

    def read_small(self, name: str) -> bytes:
        """Bytes of a top-level file (manifest.json, manifest.jws)."""
        ...

    def data_files(self) -> dict[str, int]:
        """Every regular file under data/: relative path -> size."""
        ...

    def open_data(self, path: str) -> BinaryIO:
        """Open data/<path> for reading; the caller closes it."""
        ...


def _missing(name: str) -> VerificationError:
    return VerificationError(f"package has no {name}", reason="missing_manifest", path=name)


class DirectorySource:
    """A package laid out as a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read_small(self, name: str) -> bytes:
        """Read a top-level file without following links."""
        try:
            fd = os.open(self.root / name, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise _missing(name) from None
        except OSError as exc:
            raise VerificationError(
                f"{name} is not a regular file ({exc.strerror})", reason="symlink", path=name
            ) from exc
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise VerificationError(f"{name} is not a regular file", reason="special_file")
            data = f.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise VerificationError(
                f"{name} is larger than {MAX_MANIFEST_BYTES} bytes", reason="malformed_manifest"
            )
        return data

    def data_files(self) -> dict[str, int]:
        """Walk data/ with lstat; a link or special file anywhere is an error."""
        for entry in os.scandir(self.root):
            if entry.name not in (MANIFEST_NAME, JWS_NAME, DATA_DIR):
                raise VerificationError(
                    f"unexpected entry {entry.name!r} at the package root "
                    "(only manifest.json, manifest.jws and data/ belong there)",
                    reason="extra_file",
                    path=entry.name,
                )
        data = self.root / DATA_DIR
        try:
            mode = data.lstat().st_mode
        except FileNotFoundError:
            raise VerificationError(
                "package has no data/ directory", reason="file_missing"
            ) from None
        if not stat.S_ISDIR(mode):
            raise VerificationError("data/ is not a directory", reason="symlink", path="data")
        files: dict[str, int] = {}
        self._walk(data, "", files)
        return files

    def _walk(self, folder: Path, prefix: str, files: dict[str, int]) -> None:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = f"{prefix}{entry.name}"
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise VerificationError(
                        f"symlink inside data/: {rel}", reason="symlink", path=rel
                    )
                if stat.S_ISDIR(st.st_mode):
                    self._walk(Path(entry.path), rel + "/", files)
                elif stat.S_ISREG(st.st_mode):
                    files[rel] = st.st_size
                else:
                    raise VerificationError(
                        f"device or special file inside data/: {rel}",
                        reason="special_file",
                        path=rel,
                    )

    def open_data(self, path: str) -> BinaryIO:
        """Open without following a link swapped in after the walk."""
        fd = os.open(self.root / DATA_DIR / path, os.O_RDONLY | os.O_NOFOLLOW)
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            f.close()
            raise VerificationError(
                f"{path} is not a regular file", reason="special_file", path=path
            )
        return f


class TarSource:
    """A package serialised as a tar archive (plain or compressed), read without extracting."""

    def __init__(self, archive: tarfile.TarFile) -> None:
        self._tar = archive
        self._members: dict[str, tarfile.TarInfo] = {}
        names = [m.name for m in archive.getmembers()]
        prefix = _common_root(names)
        for member in archive.getmembers():
            name = _member_name(member.name)
            if name in ("", ".") and member.isdir():
                continue  # the archive's own root folder
            _check_member(member, name)
            if prefix:
                name = name[len(prefix) + 1 :] if name != prefix else ""
                if not name:
                    continue
            if name in self._members:
                raise VerificationError(
                    f"tar member {name!r} appears twice", reason="duplicate_path", path=name
                )
            self._members[name] = member

    def read_small(self, name: str) -> bytes:
        """Read a top-level member."""
        member = self._members.get(name)
        if member is None:
            raise _missing(name)
        if not member.isreg():
            raise VerificationError(
                f"{name} is not a regular file", reason="special_file", path=name
            )
        if member.size > MAX_MANIFEST_BYTES:
            raise VerificationError(
                f"{name} is larger than {MAX_MANIFEST_BYTES} bytes", reason="malformed_manifest"
            )
        with self._extract(member) as f:
            return f.read()

    def data_files(self) -> dict[str, int]:
        """Regular members under data/; anything outside data/ but the manifest is an error."""
        files: dict[str, int] = {}
        for name, member in self._members.items():
            if name in (MANIFEST_NAME, JWS_NAME) or name == DATA_DIR:
                continue
            if not name.startswith(DATA_DIR + "/"):
                raise VerificationError(
                    f"unexpected entry {name!r} at the package root "
                    "(only manifest.json, manifest.jws and data/ belong there)",
                    reason="extra_file",
                    path=name,
                )
            if member.isreg():
                files[name[len(DATA_DIR) + 1 :]] = member.size
        return files

    def open_data(self, path: str) -> BinaryIO:
        """Stream one member's bytes."""
        return self._extract(self._members[f"{DATA_DIR}/{path}"])

    def _extract(self, member: tarfile.TarInfo) -> BinaryIO:
        f = self._tar.extractfile(member)
        if f is None:  # only regular members reach here, and they always have a file object
            raise VerificationError(f"{member.name} has no content", reason="bad_archive")
        return cast(BinaryIO, f)


def _member_name(raw: str) -> str:
    name = raw
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") if name not in ("", "/") else name


def _check_member(member: tarfile.TarInfo, name: str) -> None:
    if member.issym() or member.islnk():
        raise VerificationError(
            f"tar member {name!r} is a link (to {member.linkname!r})",
            reason="unsafe_tar_member",
            path=name,
        )
    if not (member.isreg() or member.isdir()):
        raise VerificationError(
            f"tar member {name!r} is a device or special file",
            reason="unsafe_tar_member",
            path=name,
        )
    problem = path_problem(name)
    if problem is not None:
        raise VerificationError(
            f"tar member {member.name!r} escapes the package root: it {problem}",
            reason="unsafe_tar_member",
            path=name,
        )


def _common_root(names: list[str]) -> str:
    """The single top folder every member sits in (a `tar cf x.tar pkg/` archive), or ''."""
    cleaned = [_member_name(n) for n in names]
    if any(n in (MANIFEST_NAME, JWS_NAME) for n in cleaned):
        return ""
    tops = {n.split("/", 1)[0] for n in cleaned if n}
    if len(tops) == 1:
        top = tops.pop()
        if f"{top}/{MANIFEST_NAME}" in cleaned:
            return top
    return ""


@contextmanager
def open_source(path: Path) -> Iterator[PackageSource]:
    """Open a package directory or tar archive for verification."""
    if path.is_dir():
        yield DirectorySource(path)
        return
    if not path.is_file():
        raise InvalidInputError(f"no package at {path}")
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise VerificationError(
            f"{path} is not a readable tar archive: {exc}", reason="bad_archive"
        ) from exc
    with archive:
        try:
            yield TarSource(archive)
        except tarfile.TarError as exc:
            raise VerificationError(f"tar archive is damaged: {exc}", reason="bad_archive") from exc
