"""Files as composer reads and writes them: only regular files, sizes checked before reading,
temporaries that a crashed save leaves behind removed by the next save.

Reading: a path may name a FIFO (``open`` blocks until a writer comes, forever), a device
(``/dev/zero`` never ends) or a directory. ``open_regular`` opens without blocking and refuses all
but a regular file at once; the size is known before a byte is read.

Writing (``Temporary``): a save writes ``.composer-<8 hex>.tmp`` in the target's folder (short,
so a 255-character target name still fits), created exclusively and held under an exclusive
``flock`` while it is written, then renamed over the target. A save killed with SIGKILL leaves its
temporary, whose lock died with it: the next save into that folder removes every
``.composer-*.tmp`` that no live process holds. A temporary of a save still running elsewhere is
locked, and left alone (on a file system without ``flock`` none can be told dead: none is removed).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX, TEMP_SUFFIX = ".composer-", ".tmp"


class FileProblem(ValueError):
    """A path that is not a readable regular file, or too large: the caller words it as its error."""


class TooLarge(FileProblem):
    """A regular file larger than the caller's limit; ``size`` is how large (as far as known)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size:,} bytes")
        self.size = size


def open_regular(path: str | os.PathLike, max_bytes: int | None = None, *, follow: bool = True) -> int:
    """A read-only descriptor of ``path``, which must be a regular file (of at most ``max_bytes``);
    with ``follow=False``, not a symbolic link either (a file of a checkpoint directory is its own).

    Opening does not block (a FIFO with no writer opens at once, and is then refused).

    Raises:
        FileProblem: not a regular file, a symbolic link (``follow=False``), or larger than ``max_bytes``.
        OSError: it cannot be opened (missing, no permission).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except ValueError as e:  # a NUL byte in the path
        raise FileProblem(f"not a valid path ({e})") from None
    except OSError as e:
        if not follow and e.errno == errno.ELOOP:
            raise FileProblem("a symbolic link: refused") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem(f"not a regular file (a {_kind(info.st_mode)}): refused")
        if max_bytes is not None and info.st_size > max_bytes:
            raise TooLarge(info.st_size)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, max_bytes: int, *, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see ``open_regular``)."""
    fd = open_regular(path, max_bytes, follow=follow)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew since fstat
        raise TooLarge(len(data))
    return data


def fd_path(fd: int, fallback: str | os.PathLike) -> str:
    """A path that names the open file ``fd`` itself (Linux's ``/proc/self/fd``), so a library that
    takes a path opens what was checked; ``fallback`` elsewhere."""
    proc = f"/proc/self/fd/{fd}"
    return proc if os.path.exists(proc) else os.fspath(fallback)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


class Temporary:
    """A temporary file beside ``target``, owned by this process while it is open (see the module)."""

    def __init__(self, target: Path) -> None:
        self.folder = target.parent
        remove_stale(self.folder)
        for _ in range(100):
            path = self.folder / f"{TEMP_PREFIX}{secrets.token_hex(4)}{TEMP_SUFFIX}"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(fd)
                    raise
                # a file system without locks: the temporary is unlocked, and no save removes it
            if os.fstat(fd).st_nlink:  # not removed by another save's cleanup between open and flock
                self.path, self.fd = path, fd
                return
            os.close(fd)
        raise OSError(errno.EEXIST, "cannot create a temporary file", str(self.folder))

    def is_intact(self) -> bool:
        """Whether the path still names the file this process holds (nothing swapped it)."""
        try:
            return os.lstat(self.path).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            return False

    def close(self, remove: bool) -> None:
        if remove and self.is_intact():
            self.path.unlink(missing_ok=True)
        os.close(self.fd)


def remove_stale(folder: Path) -> list[str]:
    """Remove the temporaries of saves that died in ``folder``; those of live saves stay. Returns
    the names removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)) or len(name) != 22:
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a save in progress holds it (or the file system has no locks: keep it)
            if os.lstat(entry.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(entry.path)
                removed.append(name)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Temporary]:
    """Write ``path`` atomically: yields a ``Temporary`` to fill; on success it is fsynced, given
    the mode ``path`` had (or a new file's), and renamed over ``path``; on any failure removed.

    A crash at any point leaves the old file or the new one, never a truncated one.
    """
    tmp = Temporary(path)
    try:
        yield tmp
        if not tmp.is_intact():
            raise OSError(errno.ESTALE, "the temporary file was replaced while it was written", str(tmp.path))
        os.fchmod(tmp.fd, _mode_for(path))
        os.fsync(tmp.fd)
        os.replace(tmp.path, path)
    except BaseException:
        tmp.close(remove=True)
        raise
    tmp.close(remove=False)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _mode_for(path: Path) -> int:
    """The mode the file had, or what a plain ``open`` would give."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
