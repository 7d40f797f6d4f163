"""Process helpers for the tests that kill launchers and check that no rank outlives them (Linux /proc)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until_gone(pids: Iterable[int], timeout: float) -> bool:
    """Wait up to ``timeout`` s for every pid to end; True if none is alive then."""
    pids = list(pids)
    deadline = time.time() + timeout
    while any(process_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    return not any(process_alive(p) for p in pids)
