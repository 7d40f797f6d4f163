"""Lock files: one process at a time per fold, prediction output folder and preprocessed dataset.

A lock is a file holding the owner's pid, host, start time and command, locked with ``flock``. The
kernel releases an ``flock`` when its process ends, however it ends, so a lock left by a killed
run (``kill -9``, power loss of a local disk) is stale by construction: the next run takes it over
and says whose it was. A second run while the owner lives is refused with the owner named.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pnnunet.errors import PnnunetError
from pnnunet.fileio import STORAGE_ERRNOS, storage_error

log = logging.getLogger(__name__)


class LockedByOther(PnnunetError):
    """Another live process holds the lock."""


def _owner_text(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {info.get('pid', '?')}{where}, started {started}: {info.get('command', '?')}"


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 1 << 16).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _raise_storage_error(path: Path, error: OSError) -> None:
    if error.errno not in STORAGE_ERRNOS:
        raise error
    raise storage_error(path, error) from None


@contextmanager
def hold_lock(path: Path | str, what: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the ``with`` block; ``what`` says what it guards (for the message).

    Raises
    ------
    LockedByOther : another live process holds it; the message names that process and the lock file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _raise_storage_error(path, e)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            _raise_storage_error(path, e)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_info(fd)
            os.close(fd)
            raise LockedByOther(f"{path}: {what} is in use by another process ({_owner_text(info)})\n"
                                f"  fix: wait until it has finished, or stop it (kill {info.get('pid', 'PID')}); "
                                "a lock left by a killed run is taken over automatically") from None
        # the owner may have removed the file between our open and our flock: then lock the new file
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _read_info(fd)
    if previous.get("pid") not in (None, os.getpid()):
        log.warning("%s: taking over the lock of a process that is gone (%s)", path, _owner_text(previous))
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode())
        yield
    except OSError as e:  # the lock file could not be written (a full disk): nothing was started yet
        if e.errno not in STORAGE_ERRNOS:
            raise
        raise storage_error(path, e) from None
    finally:
        try:
            os.unlink(path)  # while still locked: a waiting opener notices the new inode and retries
        except FileNotFoundError:
            pass
        os.close(fd)


# ---- the lock files of the commands (one place for their names) --------------------------------------------
def fold_lock(fold_dir: Path) -> Path:
    """``pnnunet_train`` of one fold (training, --c, --val)."""
    return Path(fold_dir) / ".pnnunet_train.lock"


def prediction_lock(output_folder: Path, part: tuple[int, int] = (0, 1)) -> Path:
    """``pnnunet_predict`` into one output folder; each part of ``-num_parts`` has its own lock."""
    part_id, num_parts = part
    suffix = "" if num_parts == 1 else f".part{part_id}of{num_parts}"
    return Path(output_folder) / f".pnnunet_predict{suffix}.lock"


def preprocessing_lock(preprocessed_dataset_dir: Path) -> Path:
    """Fingerprint, planning and preprocessing of one dataset."""
    return Path(preprocessed_dataset_dir) / ".pnnunet_preprocess.lock"
