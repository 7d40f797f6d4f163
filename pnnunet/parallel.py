"""One process pool for the whole package (fingerprint, preprocessing, integrity, conversion), and the way
every pool of the package starts its workers (:func:`worker_context`).

Workers start from a fresh interpreter (safe whatever the parent imported: Paddle, threads), one compute
thread each, results in input order, and exceptions that cross the process boundary with their message.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from typing import Any, Callable, Sequence

import SimpleITK as sitk
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from pnnunet.errors import PnnunetError

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


def worker_context(preload: Sequence[str] = ()) -> BaseContext:
    """The multiprocessing context of pnnunet's process pools: ``forkserver`` where the platform has it
    (Linux, macOS), else ``spawn`` (Windows).

    A spawned worker is a fresh interpreter that imports everything its task needs (numpy, scipy,
    SimpleITK, blosc2, batchgenerators, the parent's ``__main__``): ~1 s of CPU and ~0.2 GiB per worker,
    which on a 2-core machine is taken from the network running beside it. The forkserver is such a fresh
    interpreter too (nothing the parent imported, Paddle and its threads included, is inherited), started
    once per process by the first pool; it imports this module and ``preload`` (module names; the list
    asked for when it starts is the one used, later ones change nothing), and each worker is a fork of it
    that starts in milliseconds and shares those modules' memory. ``preload`` must name Paddle-free modules
    (forking a process that runs Paddle's threads is unsafe).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__, *preload])  # read only when the server starts
    return context


def single_thread_worker() -> None:
    """Pool initializer: one compute thread per worker process (workers already share the cores)."""
    for name in _THREAD_ENV:
        os.environ[name] = "1"
    threadpool_limits(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def call_picklable(fn: Callable, args: tuple):
    """Run ``fn(*args)`` in a worker; re-raise an exception that cannot cross the process boundary.

    An exception whose class takes other constructor arguments than its message cannot be
    unpickled in the parent (the pool then only reports a broken pool); it is re-raised as a
    :class:`PnnunetError` (user errors) or ``RuntimeError`` with the same message.
    """
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - every exception is re-raised, only made picklable
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:  # noqa: BLE001 - any failure to round-trip means the parent could not unpickle it
            if isinstance(e, PnnunetError):
                raise PnnunetError(str(e)) from None
            raise RuntimeError(f"{type(e).__name__}: {e}") from None
        raise


def map_in_pool(fn: Callable, arg_tuples: Sequence[tuple], num_processes: int = 2, progress: bool = True,
                desc: str = "") -> list:
    """``[fn(*args) for args in arg_tuples]``, in a spawn process pool when ``num_processes > 1``.

    Results keep the input order. A worker that dies (e.g. killed for lack of memory) raises
    instead of hanging. ``fn`` must be importable (module level) for the pool.
    """
    results: list[Any] = [None] * len(arg_tuples)
    with tqdm(total=len(arg_tuples), desc=desc, disable=not progress) as bar:
        if num_processes <= 1 or len(arg_tuples) <= 1:
            for i, args in enumerate(arg_tuples):
                results[i] = fn(*args)
                bar.update()
            return results
        with ProcessPoolExecutor(max_workers=min(num_processes, len(arg_tuples)),
                                 mp_context=worker_context([fn.__module__]), initializer=single_thread_worker) as pool:
            futures = {pool.submit(call_picklable, fn, args): i for i, args in enumerate(arg_tuples)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
            except BrokenProcessPool:
                raise PnnunetError("a worker process died (often: out of memory)\n  fix: rerun with fewer "
                                   "processes (-np 1); finished cases are kept") from None
    return results
