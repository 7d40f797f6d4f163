"""Run a command and measure wall time and peak RAM of its whole process tree (Linux /proc).

Peak RAM is the maximum over time of the summed RSS of the process and all its descendants,
sampled every 50 ms (pool workers included, which ``ru_maxrss`` would not add up).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def tree_rss(pid: int) -> int:
    kids, total, todo = _children_map(), 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
        todo.extend(kids.get(p, []))
    return total


def run_measured(cmd: list[str], env: dict | None = None, log_file: Path | None = None) -> dict:
    """Run ``cmd``; return wall seconds, peak tree RSS (bytes) and the exit code."""
    out = open(log_file, "w") if log_file else subprocess.DEVNULL
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if log_file:
        out.close()
    return {"cmd": " ".join(cmd), "wall_s": wall, "peak_rss_bytes": peak, "returncode": proc.returncode}
