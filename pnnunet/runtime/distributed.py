"""Data-parallel training with ``paddle.distributed``: who this process is, the per-rank batch,
the few collectives the trainer needs, and the launcher behind ``pnnunet_train -num_gpus N``.

Upstream nnU-Net's DDP recipe (reference ``nnunet_v2_models_and_scale.md`` §6): one process per
GPU; the plan's (global) batch is split over the ranks, each rank samples its own patches with its
own seed (no distributed sampler), gradients are averaged (``paddle.DataParallel``), batch-Dice
statistics, losses and pseudo-Dice counts are summed over the ranks, only rank 0 writes.

A rank learns its place from the environment that ``paddle.distributed.launch`` (or
:func:`launch_local`) sets: ``PADDLE_TRAINER_ID``, ``PADDLE_TRAINERS_NUM``, ``PADDLE_LOCAL_RANK``,
``FLAGS_selected_gpus``. :func:`launch_local` starts the N ranks of one machine itself (NCCL on
GPUs, gloo on CPUs): if one rank fails the others are stopped, and a killed launcher takes its
ranks with it (``PR_SET_PDEATHSIG`` on Linux, plus a watchdog thread).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pnnunet.errors import PnnunetError
from pnnunet.runtime.device import import_paddle

log = logging.getLogger(__name__)

LAUNCHER_PID_ENV = "PNNUNET_LAUNCHER_PID"
STOP_GRACE_SECONDS = 15.0


# ---- who am I --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env=None) -> "DistContext":
        env = os.environ if env is None else env
        world = int(env.get("PADDLE_TRAINERS_NUM", "1") or 1)
        rank = int(env.get("PADDLE_TRAINER_ID", "0") or 0)
        local = env.get("PADDLE_LOCAL_RANK", env.get("PADDLE_RANK_IN_NODE", str(rank)))
        local_size = env.get("PADDLE_LOCAL_SIZE", str(world))
        return cls(rank, world, int(local or 0), int(local_size or world))


def selected_gpu(env=None) -> int:
    """The GPU index a rank must use: ``FLAGS_selected_gpus`` (set by both launchers), else its local rank."""
    env = os.environ if env is None else env
    selected = (env.get("FLAGS_selected_gpus") or "").split(",")[0].strip()
    return int(selected) if selected else DistContext.from_env(env).local_rank


# ---- the batch of each rank ------------------------------------------------------------------
def rank_batch_sizes(global_batch_size: int, world_size: int) -> list[int]:
    """Upstream's split: every rank ``bs // N``, the first ``bs % N`` ranks one more."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if global_batch_size < world_size:
        raise PnnunetError(f"the plan's batch size {global_batch_size} is smaller than the {world_size} training "
                           f"processes (-num_gpus {world_size})\n  fix: use at most -num_gpus {global_batch_size}, "
                           "or plan with a larger batch (each process needs at least one sample)")
    base = global_batch_size // world_size
    return [base + (1 if r < global_batch_size % world_size else 0) for r in range(world_size)]


def rank_batch_and_oversample(global_batch_size: int, world_size: int, rank: int,
                              oversample: float) -> tuple[int, float]:
    """(batch size, foreground-oversampling fraction) of ``rank`` (upstream ``_set_batch_size_and_oversample``).

    The global batch's samples with index ``>= round(bs·(1 - p))`` are forced foreground (as the
    loader's rule for one process); a rank gets the fraction of forced samples in its slice, which
    the loader's rule turns back into exactly that many forced samples.
    """
    sizes = rank_batch_sizes(global_batch_size, world_size)
    if world_size == 1:
        return global_batch_size, float(oversample)
    low, high = sum(sizes[:rank]), sum(sizes[: rank + 1])
    first_forced = round(global_batch_size * (1 - oversample))
    forced = [i >= first_forced for i in range(global_batch_size)]
    if high / global_batch_size < (1 - oversample):
        fraction = 0.0
    elif low / global_batch_size > (1 - oversample):
        fraction = 1.0
    else:
        fraction = sum(forced[low:high]) / sizes[rank]
    return sizes[rank], fraction


def rank_seed(seed: int, rank: int) -> int:
    """Each rank samples and augments independently: rank 0 keeps ``seed`` (a single-process run's)."""
    return int(seed) + 7919 * int(rank)


def shard(items: Sequence, ctx: DistContext) -> list:
    """This rank's share of ``items`` (``items[rank::N]``, as upstream's final validation)."""
    return list(items)[ctx.rank::ctx.world_size]


# ---- collectives -----------------------------------------------------------------------------
def init_process_group(ctx: DistContext) -> None:
    """``paddle.distributed.init_parallel_env()`` for a rank of a job with more than one process."""
    if ctx.is_distributed:
        import_paddle().distributed.init_parallel_env()


def sum_over_ranks(values, ctx: DistContext) -> np.ndarray:
    """Element-wise sum of a float array over all ranks (float64 on the wire; gloo's float16 is broken)."""
    arr = np.asarray(values, dtype=np.float64)
    if not ctx.is_distributed:
        return arr.copy()
    paddle = import_paddle()
    t = paddle.to_tensor(arr.reshape(-1))
    paddle.distributed.all_reduce(t)
    return t.numpy().reshape(arr.shape)


def all_gather_sum(tensor):
    """Sum over ranks of a (detached) float32 tensor via ``all_gather`` (the batch-Dice tp/fp/fn)."""
    paddle = import_paddle()
    local = tensor.detach().astype("float32")
    gathered = []
    paddle.distributed.all_gather(gathered, local)
    return paddle.stack(gathered, axis=0).sum(axis=0)


_BARRIER_COUNT = itertools.count()


def barrier(ctx: DistContext, name: str = "barrier", poll_seconds: float = 0.05) -> None:
    """Wait until every rank got here, however long that takes (a counter in Paddle's TCP store).

    Not ``paddle.distributed.barrier()``: every gloo collective fails after a fixed 30 s when a
    peer is late (``PADDLE_PG_TIMEOUT`` only reaches NCCL), and ranks are late by design while rank
    0 writes checkpoints or exports the static graph, or while the ranks validate unequal shares.
    A rank that dies instead is handled by the launcher, which stops the others; a dead rank 0
    (the store's server) makes the others' next store call fail. Every rank must call the same
    barriers in the same order (the key is ``name`` and a per-process counter)."""
    if not ctx.is_distributed:
        return
    store = import_paddle().base.core.create_or_get_global_tcp_store()
    key = f"pnnunet/{name}/{next(_BARRIER_COUNT)}"
    store.add(key, 1)
    while store.add(key, 0) < ctx.world_size:
        time.sleep(poll_seconds)


# ---- the launcher ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_environments(num_processes: int, gpu: bool, base_env=None) -> list[dict]:
    """Environment of each rank of a one-machine job, as ``paddle.distributed.launch`` would set it."""
    base = dict(os.environ if base_env is None else base_env)
    endpoints = [f"127.0.0.1:{_free_port()}" for _ in range(num_processes)]
    envs = []
    for rank in range(num_processes):
        env = dict(base)
        env.update(PADDLE_TRAINER_ID=str(rank), PADDLE_TRAINERS_NUM=str(num_processes),
                   PADDLE_LOCAL_RANK=str(rank), PADDLE_RANK_IN_NODE=str(rank), PADDLE_LOCAL_SIZE=str(num_processes),
                   PADDLE_GLOBAL_SIZE=str(num_processes), PADDLE_NNODES="1",
                   PADDLE_CURRENT_ENDPOINT=endpoints[rank], PADDLE_TRAINER_ENDPOINTS=",".join(endpoints),
                   PADDLE_MASTER=endpoints[0], PADDLE_DISTRI_BACKEND="nccl" if gpu else "gloo")
        env[LAUNCHER_PID_ENV] = str(os.getpid())
        if gpu:
            env["FLAGS_selected_gpus"] = str(rank)
        else:
            env.pop("FLAGS_selected_gpus", None)
        envs.append(env)
    return envs


def _stop(procs: list[subprocess.Popen], sig=signal.SIGTERM, grace: float | None = None) -> None:
    grace = STOP_GRACE_SECONDS if grace is None else grace
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch_local(command: Sequence[str], num_processes: int, gpu: bool, poll_seconds: float = 0.5) -> int:
    """Run ``command`` as ``num_processes`` ranks on this machine and wait for all of them.

    Returns 0 when every rank succeeded, else the exit code of the first rank that failed; the
    other ranks are then stopped (SIGTERM, SIGKILL after :data:`STOP_GRACE_SECONDS`) instead of
    waiting forever in a collective. SIGTERM / SIGINT of the launcher are passed on to the ranks.
    """
    envs = rank_environments(num_processes, gpu)
    procs: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)
                except ProcessLookupError:
                    pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for env in envs:
            procs.append(subprocess.Popen(list(command), env=env))
        log.info("started %d training processes (%s): pids %s", num_processes, "NCCL" if gpu else "gloo",
                 ", ".join(str(p.pid) for p in procs))
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                if not received:
                    print(f"pnnunet: error: training process of rank {rank} exited with code {code}; stopping the "
                          "other ranks", file=sys.stderr)
                _stop(procs)
                return 130 if received and code in (130, -signal.SIGINT) else int(code if code > 0 else 1)
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_seconds)
    finally:
        _stop(procs)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _watch_launcher(launcher_pid: int, poll_seconds: float = 0.5, grace_seconds: float = 3.0) -> None:
    """Runs in a thread of a rank: once the launcher is gone, ask the main thread to exit (SIGTERM →
    SystemExit, ``finally`` blocks run); if it is stuck in a collective waiting for a dead rank, stop
    this rank's own worker processes and exit hard."""
    while os.getppid() == launcher_pid:
        time.sleep(poll_seconds)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_seconds)
    for child in multiprocessing.active_children():
        child.kill()
    os._exit(1)


def tie_to_launcher(env=None) -> None:
    """In a rank: die with the launcher (:func:`launch_local`, or ``paddle.distributed.launch``,
    whose ranks otherwise outlive a SIGKILLed launcher), and turn SIGTERM into a normal exit (so
    ``finally`` blocks stop the augmentation workers).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``; everywhere: a watchdog thread that notices when
    the parent is gone (covers the race before prctl and non-Linux systems)."""
    env = os.environ if env is None else env
    pid = env.get(LAUNCHER_PID_ENV)
    if not pid and DistContext.from_env(env).is_distributed:
        pid = str(os.getppid())  # started by another launcher: tie to it

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)
    if not pid:
        return
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    threading.Thread(target=_watch_launcher, args=(int(pid),), daemon=True, name="pnnunet-launcher-watch").start()
