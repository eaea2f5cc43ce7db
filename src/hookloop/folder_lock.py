"""One writer per checkpoint folder: a POSIX lock file that a dead process never keeps."""

from __future__ import annotations

import errno
import os
import socket
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".hookloop-backup.lock"


# Folders whose lock this process holds (realpath -> pid that took it): POSIX locks do not
# exclude the process that holds them, and closing any descriptor of the file drops them.
_HELD: dict[str, int] = {}
# What a filesystem without POSIX locks answers (some FUSE and NFS mounts without lockd).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


class FolderInUseError(RuntimeError):
    """Another live run holds the lock of a checkpoint folder."""


class FolderLock:
    """An exclusive lock on a checkpoint folder: the file `LOCK_NAME` in it, locked with
    `fcntl.lockf` (a POSIX record lock) and holding the owner's pid and host.

    The kernel releases the lock when its process dies, however it dies, so a lock left by a
    killed run never blocks. A POSIX lock (unlike `flock`) is not inherited by forked children:
    a killed run's DataLoader workers, which live on for a few seconds, do not keep it. Taking
    it never waits: a folder in use is a `FolderInUseError` naming the holder. On a filesystem
    without locks, `acquire` warns and returns False (nothing is excluded; temporaries are still
    only removed when their writer is gone).

    Example:
        lock = FolderLock("backups", owner="BackupAndRestore")
        lock.acquire()
        ...
        lock.release()
    """

    def __init__(self, directory: str | os.PathLike, owner: str = "checkpoint folder") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.owner = owner
        self._fd: int | None = None
        self._key = ""

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock (True), or warn and go on without one on a filesystem that has no
        locks (False). A folder locked by another run is a FolderInUseError."""
        if self.held:
            return True
        key = os.path.realpath(self.directory)
        if _HELD.get(key) == os.getpid():
            raise FolderInUseError(
                f"{self.owner}: {str(self.directory)!r} is in use by another fit in this process; "
                f"give each run its own folder"
            )
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if fcntl is None:
                    raise OSError(errno.ENOSYS, "no fcntl module")
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                os.close(fd)
                if e.errno in (errno.EACCES, errno.EAGAIN):
                    raise FolderInUseError(
                        f"{self.owner}: {str(self.directory)!r} is in use by another run "
                        f"(process {holder or 'unknown'}); give each run its own folder"
                    ) from None
                if e.errno in _NO_LOCKS:
                    warnings.warn(
                        f"{self.owner}: the filesystem of {str(self.directory)!r} has no file "
                        f"locks ({errno.errorcode.get(e.errno, e.errno)}): runs sharing this "
                        f"folder are not excluded; give each run its own folder",
                        stacklevel=3,
                    )
                    return False
                raise
            # A releasing holder unlinks the file: the lock counts only on the file still there.
            try:
                here, mine = os.stat(self.path), os.fstat(fd)
                if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd, self._key = fd, key
        _HELD[key] = os.getpid()
        return True

    def release(self) -> None:
        """Remove the lock file and drop the lock (nothing when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            here, mine = os.stat(self.path), os.fstat(fd)
            if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(self.path)  # still locked: no one else can have taken it
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
            if _HELD.get(self._key) == os.getpid():
                del _HELD[self._key]

    def __del__(self) -> None:
        if self._fd is not None:
            try:
                self.release()
            except Exception:  # pragma: no cover - at interpreter exit the kernel releases it
                pass


__all__ = ["LOCK_NAME", "FolderLock", "FolderInUseError"]
