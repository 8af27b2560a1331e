"""Files that hold people's data: private to the studio's OS user, written without following links.

Everything the studio writes that holds user data (the database, images, exports, backups, the users
file) is created 0600 inside folders made 0700, so other accounts on a shared machine read nothing.
Writes go to a fresh temporary name made with O_EXCL (which also refuses a symlink planted at that
name) and are then renamed over the target, so a crash never leaves half a file and a planted link is
replaced, never written through.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | Path) -> Path:
    """Create `path` (and missing parents) 0700; an existing folder of ours is narrowed to 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077 and path.stat().st_uid == os.getuid():
            path.chmod(DIR_MODE)
    except OSError:  # not ours to change (a shared mount): the files inside are still 0600
        pass
    return path


def write_private(path: str | Path, data: bytes, *, durable: bool = False) -> None:
    """Atomically replace `path` with `data`, mode 0600; a symlink at `path` is replaced, not followed.
    `durable` also waits for the disk (for small files whose loss would hurt: the users file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # O_EXCL, 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_private_file(path: str | Path) -> None:
    """Make sure `path` exists with mode 0600 before another library opens it (SQLite copies the
    database file's mode to its -wal and -shm files). An existing file of ours is narrowed to 0600."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        os.close(fd)
        return
    except FileExistsError:
        pass
    narrow(path)


def narrow(path: str | Path) -> None:
    """Set an existing file of ours to 0600 (nothing happens for a file that is not ours)."""
    path = Path(path)
    try:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.getuid():
            path.chmod(FILE_MODE)
    except OSError:
        pass


def too_open(path: str | Path) -> bool:
    """Whether others than the owner may read or write `path` (group or world bits set)."""
    return bool(stat.S_IMODE(Path(path).stat().st_mode) & 0o077)
