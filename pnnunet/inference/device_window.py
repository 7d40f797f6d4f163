"""Sliding-window prediction with the case, the tiles and the accumulators on Paddle's device (GPU).

The same algorithm as :func:`pnnunet.inference.sliding_window.predict_sliding_window` (tiles,
mirroring, Gaussian weights, float16 accumulators; reference §7.3–7.4), but every array is a Paddle
tensor on the current device and the network runs under float16 autocast (upstream predicts under
``torch.autocast`` on CUDA and accumulates on the device). Only the finished logits go to the host.
When the device has no room for the case and its accumulators, :func:`predict_case_on_device` falls
back to accumulating on the host (numpy) with the network still on the device, as upstream does.

Device-agnostic: on CPU it runs with CPU tensors (autocast off), which is how the tests check it
against the numpy implementation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from pnnunet.errors import PnnunetError
from pnnunet.inference.sliding_window import (accumulation_dtype, compute_gaussian, iter_tiles, mirror_combinations,
                                              pad_to_patch, predict_sliding_window)
from pnnunet.runtime.amp import autocast_kwargs
from pnnunet.runtime.device import PADDLE_RUNTIME_ERRORS, import_paddle, is_out_of_memory, raise_if_out_of_memory

log = logging.getLogger(__name__)


def _network_call(paddle, network, x, autocast: dict):
    with paddle.no_grad(), paddle.amp.auto_cast(**autocast):
        y = network(x)
    return y.astype("float32")


def _mirrored_mean(paddle, network, x, combos, autocast: dict, max_batch: int):
    """Mean of the logits over the mirror combinations, float32 (G, K, *P); sums in ``combos`` order."""
    work = [(c, t) for c in combos for t in range(x.shape[0])]
    outs = [None] * x.shape[0]
    for start in range(0, len(work), max_batch):
        chunk = work[start:start + max_batch]
        batch = paddle.stack([paddle.flip(x[t], [a + 1 for a in c]) if c else x[t] for c, t in chunk])
        y = _network_call(paddle, network, batch, autocast)
        for (c, t), y_i in zip(chunk, y):
            y_i = paddle.flip(y_i, [a + 1 for a in c]) if c else y_i
            outs[t] = y_i if outs[t] is None else outs[t] + y_i
    total = paddle.stack(outs)
    return total / float(len(combos)) if len(combos) > 1 else total


def predict_sliding_window_on_device(network, data: np.ndarray, patch_size: Sequence[int], num_outputs: int,
                                     step_size: float = 0.5, mirror_axes: Sequence[int] | None = None,
                                     tile_batch_size: int = 1, autocast: dict | None = None,
                                     dtype=np.float16, progress: bool = False,
                                     on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Logits (K, *S) of one case (numpy ``dtype``), computed and accumulated on Paddle's current device.

    ``network`` maps a float32 tensor (N, C, *P) to logits (N, K, *P) (eval mode, deep supervision
    off); ``autocast``: kwargs of ``paddle.amp.auto_cast`` (default: :func:`autocast_kwargs` of the
    current device, i.e. float16 convolutions on a GPU, off on a CPU). Raises Paddle's out-of-memory
    error when the device is too small (see :func:`predict_case_on_device`).
    """
    paddle = import_paddle()
    if autocast is None:
        autocast = autocast_kwargs(paddle.device.get_device())
    patch_size = tuple(int(p) for p in patch_size)
    dtype = accumulation_dtype(dtype)
    acc = "float16" if dtype == np.float16 else "float32"
    padded, unpad = pad_to_patch(np.asarray(data, dtype=np.float32), patch_size)
    spatial = padded.shape[1:]
    x_all = paddle.to_tensor(padded)
    logits = paddle.zeros([num_outputs, *spatial], dtype=acc)
    weights = paddle.zeros(list(spatial), dtype=acc)
    gaussian = paddle.to_tensor(compute_gaussian(patch_size).astype(np.float32))
    combos = mirror_combinations(mirror_axes)
    tiles_per_call = max(1, tile_batch_size // len(combos))
    tiles = list(iter_tiles(spatial, patch_size, step_size))
    with tqdm(total=len(tiles), disable=not progress, desc="tiles") as bar:
        for start in range(0, len(tiles), tiles_per_call):
            group = tiles[start:start + tiles_per_call]
            x = paddle.stack([x_all[(slice(None), *t)] for t in group])
            y = _mirrored_mean(paddle, network, x, combos, autocast, tile_batch_size)
            for t, y_t in zip(group, y):
                index = (slice(None), *t)
                # float32 sum rounded into the accumulator, as numpy's float16 += float32 does
                logits[index] = (logits[index].astype("float32") + y_t * gaussian).astype(acc)
                weights[t] = (weights[t].astype("float32") + gaussian).astype(acc)
            bar.update(len(group))
            if on_tile is not None:
                on_tile(start + len(group), len(tiles))
    out = (logits.astype("float32") / weights.astype("float32")).astype(acc)
    if not bool(paddle.isfinite(out).all()):
        raise PnnunetError(f"the prediction contains inf or NaN values: the network produced non-finite logits or "
                           f"their weighted sums exceed {dtype} (check the checkpoint and the input data)")
    return np.ascontiguousarray(out.numpy()[(slice(None), *unpad[1:])])


def predict_case_on_device(network, data: np.ndarray, patch_size: Sequence[int], num_outputs: int,
                           step_size: float = 0.5, mirror_axes: Sequence[int] | None = None,
                           tile_batch_size: int = 1, autocast: dict | None = None, dtype=np.float16,
                           progress: bool = False, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """:func:`predict_sliding_window_on_device`, falling back to host accumulators (the network stays on
    the device) when the device runs out of memory for the case; a tile batch that does not fit even
    then is a clear error naming ``--tile_batch_size``."""
    paddle = import_paddle()
    if autocast is None:
        autocast = autocast_kwargs(paddle.device.get_device())
    try:
        return predict_sliding_window_on_device(network, data, patch_size, num_outputs, step_size, mirror_axes,
                                                tile_batch_size, autocast, dtype, progress, on_tile)
    except PADDLE_RUNTIME_ERRORS as e:
        if not is_out_of_memory(e):
            raise
        log.warning("warning: case of shape %s does not fit on the device with its accumulators; accumulating on "
                    "the host instead (slower)", tuple(data.shape))
    _empty_cache(paddle)

    def predict(x: np.ndarray) -> np.ndarray:
        return _network_call(paddle, network, paddle.to_tensor(x), autocast).numpy()

    try:
        return predict_sliding_window(predict, data, patch_size, num_outputs, step_size, mirror_axes, True,
                                      tile_batch_size, progress, dtype, on_tile)
    except PADDLE_RUNTIME_ERRORS as e:
        raise_if_out_of_memory(e, f"predicting a batch of {tile_batch_size} tile(s) of {tuple(patch_size)} on the "
                                  "device", "pnnunet_predict --tile_batch_size 1, fewer -npp/-nps processes, or a "
                                            "GPU with more memory")
        raise


def _empty_cache(paddle) -> None:
    cuda = getattr(paddle.device, "cuda", None)
    if cuda is not None and hasattr(cuda, "empty_cache") and paddle.device.is_compiled_with_cuda():
        cuda.empty_cache()
