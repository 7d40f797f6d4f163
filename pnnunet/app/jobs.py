"""Jobs on disk and the one worker that runs them, one at a time.

A job is a folder ``<jobs root>/<id>/`` (the id from :func:`secrets.token_urlsafe`, so it cannot be
guessed) holding everything about it, so a restarted server finds every job again:

- ``job.json`` (written by the server): the model, the folds, what was uploaded;
- ``state.json`` (server): ``uploading``, ``queued``, ``running`` (with the worker's pid), ``cancelled``,
  plus a message and times;
- ``progress.json`` and ``result.json`` (written by the worker process): the stage, tile i/N, and at
  the end ``done`` with the output files or ``failed`` with the error in plain words;
- ``upload/``, ``images/``, ``output/``, ``view/``, ``log.txt``.

A job's state is ``result.json``'s when that exists, else ``state.json``'s. :class:`JobRunner` is a
thread that starts the oldest queued job's worker (``python -m pnnunet.app.worker JOB_DIR``) in its
own process group, waits for it, and kills the group on cancel. After a restart a running job whose
worker still runs is waited for; one whose worker is gone is queued again.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pnnunet.errors import PnnunetError
from pnnunet.fileio import load_json, write_json_atomic

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"[A-Za-z0-9_-]{20,64}")
FINAL = ("done", "failed", "cancelled")
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL on cancel


def _read(path: Path) -> dict:
    try:
        return load_json(path) if path.is_file() else {}
    except (ValueError, OSError):
        return {}  # a half-written file is never read (atomic writes), but a damaged one must not stop the server


class JobStore:
    """The jobs under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # ---- files ------------------------------------------------------------------------------
    def folder(self, job_id: str) -> Path:
        """The folder of an existing job; :class:`PnnunetError` for a malformed or unknown id."""
        if not JOB_ID.fullmatch(job_id or ""):
            raise PnnunetError(f"no job '{job_id}'")
        folder = self.root / job_id
        if not (folder / "job.json").is_file():
            raise PnnunetError(f"no job '{job_id}' (it may have been deleted)")
        return folder

    def create(self, request: dict) -> str:
        job_id = secrets.token_urlsafe(18)
        folder = self.root / job_id
        folder.mkdir()
        write_json_atomic(folder / "job.json", {"id": job_id, "created": time.time(), **request})
        self.set_state(job_id, "uploading", "waiting for the upload")
        return job_id

    def request(self, job_id: str) -> dict:
        return _read(self.folder(job_id) / "job.json")

    def update_request(self, job_id: str, **fields) -> None:
        folder = self.folder(job_id)
        with self._lock:
            write_json_atomic(folder / "job.json", {**_read(folder / "job.json"), **fields})

    def set_state(self, job_id: str, state: str, message: str = "", **fields) -> None:
        folder = self.root / job_id
        with self._lock:
            old = _read(folder / "state.json")
            new = {k: v for k, v in old.items() if k not in ("message",)}
            new.update(state=state, message=message, updated=time.time(), **fields)
            new.setdefault(f"{state}_at", time.time())
            write_json_atomic(folder / "state.json", new)

    # ---- views ------------------------------------------------------------------------------
    def status(self, job_id: str) -> dict:
        folder = self.folder(job_id)
        req, state = _read(folder / "job.json"), _read(folder / "state.json")
        result, progress = _read(folder / "result.json"), _read(folder / "progress.json")
        out = {"id": job_id, "created": req.get("created"), "model": req.get("model"), "folds": req.get("folds"),
               "input": req.get("input", {}).get("name") if req.get("input") else None,
               "state": state.get("state", "uploading"), "message": state.get("message", ""),
               "progress": progress, "result": None}
        if result and out["state"] != "cancelled":
            out["state"], out["message"] = result.get("state", "failed"), result.get("message", "")
            out["result"] = result
        return out

    def ids(self) -> list[str]:
        """Every job, oldest first."""
        found = [(_read(p / "job.json").get("created", 0), p.name) for p in self.root.iterdir()
                 if p.is_dir() and JOB_ID.fullmatch(p.name) and (p / "job.json").is_file()]
        return [name for _, name in sorted(found)]

    def all(self) -> list[dict]:
        out, queue = [], self.queue()
        for job_id in self.ids():
            s = self.status(job_id)
            if s["state"] == "queued":
                s["queue_position"] = queue.index(job_id) + 1
                s["message"] = s["message"] or "waiting"
            out.append(s)
        return out

    def queue(self) -> list[str]:
        """Queued jobs in the order they will run."""
        queued = [(_read(self.root / j / "state.json").get("queued_at", 0), j) for j in self.ids()
                  if self.status(j)["state"] == "queued"]
        return [j for _, j in sorted(queued)]

    # ---- transitions ------------------------------------------------------------------------
    def enqueue(self, job_id: str) -> None:
        self.set_state(job_id, "queued", "", queued_at=time.time())

    def cancel(self, job_id: str) -> str:
        """Cancel a job that has not finished; returns its state afterwards."""
        s = self.status(job_id)
        if s["state"] in FINAL:
            return s["state"]
        if s["state"] == "running":
            self.set_state(job_id, "running", "cancelling", cancel_requested=True)
            return "cancelling"
        self.set_state(job_id, "cancelled", "cancelled before it started")
        return "cancelled"

    def recover(self) -> list[str]:
        """After a (re)start: running jobs whose worker is gone are queued again; returns the ids of
        running jobs whose worker is still alive (to be waited for)."""
        alive = []
        for job_id in self.ids():
            s = self.status(job_id)
            if s["state"] != "running":
                continue
            pid = _read(self.root / job_id / "state.json").get("pid")
            if pid and _is_worker(pid, self.root / job_id):
                alive.append(job_id)
            else:
                self.set_state(job_id, "queued", "the server was restarted; the segmentation starts again",
                               queued_at=_read(self.root / job_id / "state.json").get("queued_at", time.time()))
                (self.root / job_id / "progress.json").unlink(missing_ok=True)
        return alive


def _is_worker(pid: int, folder: Path) -> bool:
    """Is process ``pid`` alive and the worker of ``folder`` (not a recycled pid)?"""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return str(folder).encode() in cmdline


def worker_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "pnnunet.app.worker", str(folder)]


class JobRunner(threading.Thread):
    """Runs queued jobs one at a time, each in its own process (see the module docstring)."""

    def __init__(self, store: JobStore, command=worker_command, poll: float = 0.2):
        super().__init__(name="pnnunet-app-jobs", daemon=True)
        self.store, self.command, self.poll = store, command, poll
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.current: str | None = None
        self.proc: subprocess.Popen | None = None  # the running worker started by this runner
        self._adopted = store.recover()

    def stop(self, kill_worker: bool = True, timeout: float = 10) -> None:
        """Stop the thread; with ``kill_worker`` the running job's worker too (its job stays ``running``
        on disk and is queued again at the next start, as after a crash)."""
        self.stopping.set()
        self.wake.set()
        self.join(timeout)
        if kill_worker and self.current:
            pid = _read(self.store.root / self.current / "state.json").get("pid")
            if pid:
                _signal_group(int(pid), signal.SIGKILL)
            if self.proc is not None:
                self.proc.wait()

    def run(self) -> None:
        for job_id in self._adopted:
            self._wait_adopted(job_id)
        while not self.stopping.is_set():
            queue = self.store.queue()
            if not queue:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                self._run_one(queue[0])
            except Exception as e:  # the runner must survive anything one job does
                log.exception("job %s", queue[0])
                self.store.set_state(queue[0], "failed", f"the job could not be started ({type(e).__name__}: {e})")
                write_json_atomic(self.store.root / queue[0] / "result.json",
                                  {"state": "failed", "message": f"the job could not be started: {e}"})

    def _run_one(self, job_id: str) -> None:
        folder = self.store.root / job_id
        self.current = job_id
        (folder / "result.json").unlink(missing_ok=True)
        with open(folder / "log.txt", "ab") as logf:
            proc = subprocess.Popen(self.command(folder), stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.proc = proc
        self.store.set_state(job_id, "running", "starting", pid=proc.pid, started_at=time.time())
        cancelled_at = None
        while proc.poll() is None:
            if self.stopping.is_set():
                return  # the worker keeps running (or is killed by stop()); the job stays "running"
            if cancelled_at is None and _read(folder / "state.json").get("cancel_requested"):
                cancelled_at = time.monotonic()
                _signal_group(proc.pid, signal.SIGTERM)
            elif cancelled_at is not None and time.monotonic() - cancelled_at > KILL_GRACE:
                _signal_group(proc.pid, signal.SIGKILL)
            time.sleep(self.poll)
        cancelled = cancelled_at is not None
        self.proc = None
        self._finish(job_id, proc.returncode, cancelled)

    def _wait_adopted(self, job_id: str) -> None:
        folder = self.store.root / job_id
        pid = _read(folder / "state.json").get("pid")
        self.current = job_id
        cancelled = False
        while pid and _is_worker(pid, folder):  # not our child: /proc tells when it is gone
            if self.stopping.is_set():
                return
            if not cancelled and _read(folder / "state.json").get("cancel_requested"):
                cancelled = True
                _signal_group(int(pid), signal.SIGKILL)
            time.sleep(self.poll)
        self._finish(job_id, None, cancelled)

    def _finish(self, job_id: str, returncode: int | None, cancelled: bool) -> None:
        folder = self.store.root / job_id
        self.current = None
        if cancelled:
            (folder / "result.json").unlink(missing_ok=True)
            self.store.set_state(job_id, "cancelled", "cancelled while running", pid=None)
        elif not (folder / "result.json").is_file():
            what = f"exit code {returncode}" if returncode is not None else "after a server restart"
            write_json_atomic(folder / "result.json", {
                "state": "failed", "message": f"the segmentation process stopped unexpectedly ({what}); "
                                              "the job's log.txt has the details"})
            self.store.set_state(job_id, "running", "", pid=None)
        else:
            self.store.set_state(job_id, "running", "", pid=None)


def _signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group of ``pid`` (the worker and any helper it started)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
