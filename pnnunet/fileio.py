"""Atomic writes and small JSON helpers: the only place that writes final files.

A writer first writes ``.NAME.tmp-PID`` beside the target and then renames it, so a killed run
never leaves a half-written file under the final name.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pnnunet.errors import DatasetError


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name keeps the final suffix(es) so that writers that pick a format from the
    file name (SimpleITK, PIL) still work.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        raise storage_error(path, e) from None
    finally:
        if tmp.exists():
            tmp.unlink()


# write failures that are the storage's, not the program's: a full disk or quota, a read-only file system,
# missing permissions. A writer turns them into one message naming the path; what was written before stays.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def storage_error(path: Path | str, error: OSError) -> DatasetError:
    """The :class:`DatasetError` for a write to ``path`` that failed with a storage ``error``."""
    what = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "the file system is read-only", errno.EFBIG: "the file is too large for the file system"
            }.get(error.errno, f"permission denied ({error.strerror})")
    return DatasetError(path, f"cannot be written: {what}",
                        "free space (or choose a writable folder / fix the permissions), then rerun the same "
                        "command: finished outputs and the previous checkpoint are kept and it resumes")


def ensure_writable_folder(folder: Path | str, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and check that a file can be written into it; a :class:`DatasetError`
    naming it otherwise (a file in its place, a read-only or full file system, no permission)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DatasetError(folder, f"the {what} is a file, not a folder", f"choose another {what} or remove the file")
    probe = folder / f".pnnunet-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"0")
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        raise storage_error(folder, e) from None
    finally:
        if probe.exists():
            probe.unlink()
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path | str, recursive: bool = False) -> list[Path]:
    """Delete the ``.tmp-PID-NAME`` files of :func:`atomic_path` and ``.tmp-PID-*`` folders (e.g. a static-graph
    export's) whose writer process is gone (killed before it could clean up); returns them. Temporaries of live
    processes (other parts, workers) are left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.rglob(".tmp-*") if recursive else folder.glob(".tmp-*")):
        pid = p.name[len(".tmp-"):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)) or not p.exists():
            continue  # not exists: inside a stale folder removed before
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o)}")


def write_json_atomic(path: Path | str, obj: Any, sort_keys: bool = False) -> None:
    """Write ``obj`` as indented JSON (numpy scalars/arrays converted) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default))


def load_json(path: Path | str) -> Any:
    with open(path) as f:
        return json.load(f)


def save_npy_atomic(path: Path | str, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` (memory-mappable with ``np.load(mmap_mode='r')``) atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))


def read_json_file(path: Path | str, missing_fix: str, what: str | None = None) -> Any:
    """Parse the JSON file ``path``; a missing file, broken JSON (line and column named) or a file that is not
    UTF-8 text is a :class:`DatasetError` naming the file and the fix (``missing_fix`` for a missing file)."""
    path = Path(path)
    what = what or path.name
    if not path.is_file():
        raise DatasetError(path, f"{what} not found", missing_fix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(path, f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}",
                           "fix the JSON syntax at that position (a missing comma or quote, or a trailing comma), "
                           "or write the file again") from None
    except UnicodeDecodeError as e:
        raise DatasetError(path, f"is not a UTF-8 text file ({e})", f"save {what} as UTF-8 JSON") from None
