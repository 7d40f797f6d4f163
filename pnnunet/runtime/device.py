"""Device choice and CPU threading for Paddle."""

from __future__ import annotations

import logging
import os

from pnnunet.errors import PnnunetError

log = logging.getLogger(__name__)


def import_paddle():
    """Import Paddle or explain which wheel to install."""
    root = logging.getLogger()
    level = root.level
    try:
        import paddle
    except ImportError:
        raise PnnunetError("PaddlePaddle is not installed\n  fix: pip install \"pnnunet[cpu]\" for the CPU build, or "
                           "install paddlepaddle-gpu for NVIDIA GPUs (not both)") from None
    if root.level != level:  # Paddle 2.6's import sets the root logger to WARNING: keep the CLI's INFO
        root.setLevel(level)
    return paddle


def gpu_count() -> int:
    """CUDA devices Paddle sees (0 on a CPU build)."""
    paddle = import_paddle()
    if not paddle.device.is_compiled_with_cuda():
        return 0
    return int(paddle.device.cuda.device_count())


def parse_device(requested: str | None) -> tuple[str, int | None]:
    """``auto``/``cpu``/``gpu``/``cuda``/``gpu:K``/``cuda:K`` → (kind, index or None)."""
    text = (requested or "auto").strip().lower()
    kind, _, index = text.partition(":")
    if kind == "cuda":
        kind = "gpu"
    if kind not in ("auto", "cpu", "gpu") or (index and (kind != "gpu" or not index.isdigit())):
        raise PnnunetError(f"unknown device '{requested}'\n  fix: use -device cpu, gpu, gpu:K (K = card index) "
                           "or auto")
    return kind, int(index) if index else None


def pick_device(requested: str | None = "auto") -> str:
    """'gpu' (or 'gpu:K' when a card was named) when requested or (auto) when Paddle sees a CUDA
    device, else 'cpu'; sets Paddle's device."""
    paddle = import_paddle()
    kind, index = parse_device(requested)
    n_gpus = gpu_count()
    if kind == "gpu":
        if n_gpus == 0:
            raise PnnunetError(f"-device {requested} was requested but Paddle sees no GPU\n  fix: install "
                               "paddlepaddle-gpu matching your CUDA, or use -device cpu")
        if index is not None and index >= n_gpus:
            raise PnnunetError(f"-device {requested}: Paddle sees {n_gpus} GPU(s) (gpu:0 … gpu:{n_gpus - 1})\n"
                               "  fix: name a visible card; CUDA_VISIBLE_DEVICES renumbers the cards from 0")
        device = "gpu" if index is None else f"gpu:{index}"
    elif kind == "cpu":
        device = "cpu"
    else:
        device = "gpu" if n_gpus else "cpu"
    paddle.set_device(device)
    if device == "cpu":
        set_cpu_threads()
    return device


def set_cpu_threads(n: int | None = None) -> int:
    """Let Paddle's CPU kernels use ``n`` threads (default: all cores). ``import paddle`` sets 1."""
    paddle = import_paddle()
    n = n or os.cpu_count() or 1
    try:
        paddle.base.core.set_num_threads(n)
    except AttributeError:  # older Paddle
        log.debug("paddle.base.core.set_num_threads not available")
    return n


_OOM_MARKERS = ("ResourceExhaustedError", "Out of memory", "out of memory", "CUDA error(2)",
                "cudaErrorMemoryAllocation")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is Paddle's (or the host's) out-of-memory error. Paddle raises it as
    ``MemoryError`` or as a ``RuntimeError``/``SystemError`` whose type name or message says
    ``ResourceExhaustedError`` / ``Out of memory`` (2.6 and 3.x differ)."""
    if isinstance(error, MemoryError):
        return True
    text = f"{type(error).__name__}: {error}"
    return any(marker in text for marker in _OOM_MARKERS)


# What Paddle's C++ core raises for a failed operation (its error classes map to these Python types);
# catching these, and not Exception, keeps bugs in our own code (TypeError, NameError...) visible.
PADDLE_RUNTIME_ERRORS = (RuntimeError, ValueError, OSError, NotImplementedError, MemoryError)


def raise_if_out_of_memory(error: BaseException, what: str, fix: str) -> None:
    """Turn an out-of-memory ``error`` into a PnnunetError naming what ran out and the fix; else return."""
    if is_out_of_memory(error):
        raise PnnunetError(f"out of memory while {what}\n  fix: {fix}") from None
