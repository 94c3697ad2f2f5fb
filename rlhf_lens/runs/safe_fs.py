"""Writes and deletes under a root folder that never follow a symbolic link.

A folder someone hands over may hold links planted to make a tool write or delete elsewhere
(`rlhf-lens -> ~/important`, `analyses/<key>.json -> ~/.bashrc`). Every write, replace and delete
below a *root* goes through this module: each folder on the way is opened with `O_NOFOLLOW`
relative to its parent's descriptor (`os.open(..., dir_fd=...)`), so a link anywhere below the root
is refused with `UnsafePathError` naming it, never followed, and cannot be swapped in between the
check and the write. The root itself is the caller's choice (a path the user typed) and is followed.

A full disk is `DiskFullError`: the path, the bytes that did not fit and the fix, and no partial
file is left behind (bytes go to a temporary name that is removed on any failure).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePath

from .errors import RunFormatError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class UnsafePathError(RunFormatError):
    """A path under a folder rlhf-lens writes to is a symbolic link (or not the kind of entry expected).

    rlhf-lens never writes, replaces or deletes through a link, so a folder handed over by someone else
    cannot make it touch anything outside that folder.
    """


class DiskFullError(OSError):
    """A write failed for lack of space; names the path and the bytes needed. Nothing partial is left."""

    def __init__(self, path: str | os.PathLike[str], needed: int | None) -> None:
        self.path = Path(path)
        self.needed = needed
        amount = f"{_megabytes(needed)} more" if needed is not None else "more space"
        super().__init__(
            errno.ENOSPC,
            f"no space left on the device writing {self.path}: it needs {amount}; free some space "
            f"(or write elsewhere: --out, --cache-dir) and run again. Nothing partial was left behind",
        )

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` says the device is full: an OSError with ENOSPC, or a library's wrapper of one (safetensors
    raises its own error type, saying "No space left on device (os error 28)")."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(err) or "os error 28" in str(err)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def _parts(relative: str | os.PathLike[str]) -> tuple[str, ...]:
    parts = PurePath(relative).parts
    if PurePath(relative).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{relative!s}: expected a plain relative path below the root (no '..', not absolute)")
    return parts


def _refusal(path: Path, found: str) -> UnsafePathError:
    return UnsafePathError(
        f"{path} is {found}; rlhf-lens never writes, replaces or deletes through a link or over an entry it did "
        "not make there. Move it away (or copy the run to a folder of your own) and run again"
    )


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder where a file belongs"
    return "not a folder" if stat.S_ISREG(mode) else "a special file"


@contextlib.contextmanager
def open_dir(root: str | os.PathLike[str], relative: str | os.PathLike[str] = "", *, create: bool = False) -> Iterator[int]:
    """A descriptor of folder `root/relative`, every folder below `root` opened without following links
    (created when `create`); UnsafePathError names the first link or non-folder on the way."""
    root = Path(root)
    if create:
        root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    here = root
    try:
        for part in _parts(relative) if str(relative) else ():
            here = here / part
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
                child = _open_child_dir(fd, part, here)
            except OSError as err:
                raise _entry_refusal(fd, part, here, err) from err
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _open_child_dir(fd: int, part: str, here: Path) -> int:
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=fd)
    except OSError as err:
        raise _entry_refusal(fd, part, here, err) from err


def _entry_refusal(fd: int, part: str, here: Path, err: OSError) -> Exception:
    if err.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return err
    return _refusal(here, _describe(os.lstat(part, dir_fd=fd).st_mode))


def _lstat_mode(fd: int, name: str) -> int | None:
    try:
        return os.lstat(name, dir_fd=fd).st_mode
    except FileNotFoundError:
        return None


def _split(relative: str | os.PathLike[str]) -> tuple[PurePath, str]:
    parts = _parts(relative)
    if not parts:
        raise ValueError("expected a file name below the root, got an empty path")
    return PurePath(*parts[:-1]) if len(parts) > 1 else PurePath(""), parts[-1]


def ensure_dir(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> Path:
    """Create folder `root/relative` (and the folders on the way) without following a link; return its path."""
    with open_dir(root, relative, create=True):
        pass
    return Path(root) / relative


def write_bytes(root: str | os.PathLike[str], relative: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `root/relative` atomically (temporary file, fsync, `os.replace`, fsync of the folder),
    creating the folders on the way; no link below `root` is followed, and an existing link (or folder) at
    the target is refused rather than replaced."""
    folder, name = _split(relative)
    path = Path(root) / relative
    with open_dir(root, folder, create=True) as fd:
        _refuse_non_file(fd, name, path)
        tmp = f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            out = os.open(tmp, _NEW_FILE_FLAGS, 0o644, dir_fd=fd)
            with os.fdopen(out, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                raise DiskFullError(path, len(data)) from err
            raise
        with contextlib.suppress(OSError):
            os.fsync(fd)
    return path


def read_bytes(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> bytes:
    """The bytes of file `root/relative`, read without following a link anywhere below `root` (a link is
    UnsafePathError; a missing file FileNotFoundError)."""
    folder, name = _split(relative)
    with open_dir(root, folder) as fd:
        try:
            descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=fd)
        except OSError as err:
            raise _entry_refusal(fd, name, Path(root) / relative, err) from err
        with os.fdopen(descriptor, "rb") as f:
            return f.read()


def rename(root: str | os.PathLike[str], folder: str | os.PathLike[str], source: str, target: str) -> None:
    """Rename entry `source` of folder `root/folder` to `target` in the same folder (replacing a file there, as
    `os.replace` does), without following a link on the way; a link at either name is refused, never moved."""
    here = Path(root) / folder
    with open_dir(root, folder) as fd:
        mode = _lstat_mode(fd, source)
        if mode is None:
            raise FileNotFoundError(errno.ENOENT, "no such file or folder", str(here / source))
        if stat.S_ISLNK(mode):
            raise _refusal(here / source, "a symbolic link")
        if stat.S_ISREG(mode):
            _refuse_non_file(fd, target, here / target)
        elif _lstat_mode(fd, target) is not None:
            raise _refusal(here / target, "already there")  # folders are moved only onto free names
        os.replace(source, target, src_dir_fd=fd, dst_dir_fd=fd)
        with contextlib.suppress(OSError):
            os.fsync(fd)


def _refuse_non_file(fd: int, name: str, path: Path) -> None:
    """UnsafePathError unless `name` in the folder `fd` is absent or a regular file."""
    mode = _lstat_mode(fd, name)
    if mode is not None and not stat.S_ISREG(mode):
        raise _refusal(path, _describe(mode))


def symlink(root: str | os.PathLike[str], relative: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Make `root/relative` a new link to `target` (the folders on the way are not followed if they are links)."""
    folder, name = _split(relative)
    with open_dir(root, folder, create=True) as fd:
        os.symlink(os.fspath(target), name, dir_fd=fd)
    return Path(root) / relative


def remove(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> None:
    """Delete `root/relative` (a file, a link itself, or a whole folder) without following any link: a link is
    removed, never the tree it points to. Missing is fine."""
    folder, name = _split(relative)
    try:
        with open_dir(root, folder) as fd:
            mode = _lstat_mode(fd, name)
            if mode is None:
                return
            if stat.S_ISDIR(mode):
                shutil.rmtree(name, dir_fd=fd)  # fd-based on Linux and macOS: shutil.rmtree.avoids_symlink_attacks
            else:
                os.unlink(name, dir_fd=fd)
            with contextlib.suppress(OSError):
                os.fsync(fd)
    except FileNotFoundError:
        return


def links_under(root: str | os.PathLike[str], relative: str | os.PathLike[str] = "") -> list[Path]:
    """Every symbolic link at or below `root/relative`, found without following any (the path itself included)."""
    start = Path(root) / relative
    if start.is_symlink():
        return [start]
    found: list[Path] = []
    stack = [start] if start.is_dir() else []
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    found.append(Path(entry.path))
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    return sorted(found)


def refuse_links(root: str | os.PathLike[str], relative: str | os.PathLike[str] = "") -> None:
    """UnsafePathError naming the first link at or below `root/relative` (or on the way to it), if any."""
    here = Path(root)
    for part in _parts(relative) if str(relative) else ():
        here = here / part
        if here.is_symlink():
            raise _refusal(here, "a symbolic link")
    found = links_under(root, relative)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise _refusal(found[0], "a symbolic link" + more)


__all__ = [
    "DiskFullError",
    "UnsafePathError",
    "is_disk_full",
    "ensure_dir",
    "links_under",
    "open_dir",
    "read_bytes",
    "refuse_links",
    "remove",
    "rename",
    "symlink",
    "write_bytes",
]
