"""One fold's prediction of one preprocessed case: the backend chosen once, used by the Predictor and by a
fold's final validation.

- CPU: the sliding window on the host (:mod:`.sliding_window`) around the fastest network available
  (bfloat16 oneDNN convolutions, Paddle Inference static graph, else the eager network; :mod:`.static_graph`).
- GPU: the case, tiles and accumulators on the device with float16 autocast (``fp16``, upstream's
  behaviour) or without (``fp32``), host accumulators only when the device is short of memory
  (:mod:`.device_window`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pnnunet.inference.device_window import predict_case_on_device
from pnnunet.inference.sliding_window import predict_sliding_window
from pnnunet.inference.static_graph import make_predict_fn
from pnnunet.runtime.amp import amp_enabled_for, autocast_kwargs


class CasePredictor:
    """Logits (K, *S) of one preprocessed case with one fold's network (see the module docstring).

    Parameters
    ----------
    build_network : returns the fold's network with its weights loaded (eval mode, no deep supervision)
    checkpoint_path : the fold's checkpoint (locates the static-graph export cache on CPU)
    input_channels, patch_size, num_outputs : of the network
    device : ``cpu`` or ``gpu`` (``gpu:N``)
    precision : resolved precision (``fp32``, ``bf16`` on CPU, ``fp16`` on GPU)
    use_static_graph, num_threads : CPU only (see :func:`make_predict_fn`)
    tile_batch_size : patches per network call
    accumulation_dtype : numpy float16 (upstream's) or float32
    """

    def __init__(self, build_network: Callable[[], object], checkpoint_path: Path | str, input_channels: int,
                 patch_size: Sequence[int], num_outputs: int, *, device: str = "cpu", precision: str = "fp32",
                 use_static_graph: bool = True, num_threads: int | None = None, tile_batch_size: int = 1,
                 accumulation_dtype=np.float16):
        self.patch_size = tuple(int(p) for p in patch_size)
        self.num_outputs, self.tile_batch_size = num_outputs, tile_batch_size
        self.accumulation_dtype = accumulation_dtype
        self.on_device = amp_enabled_for(device)
        if self.on_device:
            self._network = build_network()
            self._autocast = autocast_kwargs(device, enabled=precision == "fp16")
            self._predict = None
            self._backend = f"gpu-{precision}"
        else:
            self._predict, self._backend = make_predict_fn(build_network, checkpoint_path, input_channels,
                                                           len(self.patch_size), device, use_static_graph,
                                                           num_threads, precision)

    @property
    def backend(self) -> str:
        """``bf16``, ``static``, ``eager`` (CPU; a static graph that failed becomes ``eager``), ``gpu-fp16`` or
        ``gpu-fp32``."""
        return getattr(self._predict, "backend", self._backend) if self._predict is not None else self._backend

    def __call__(self, data: np.ndarray, mirror_axes: Sequence[int] | None, step_size: float = 0.5,
                 progress: bool = False, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
        if self.on_device:
            return predict_case_on_device(self._network, data, self.patch_size, self.num_outputs, step_size,
                                          mirror_axes, self.tile_batch_size, self._autocast,
                                          self.accumulation_dtype, progress, on_tile)
        return predict_sliding_window(self._predict, data, self.patch_size, self.num_outputs, step_size,
                                      mirror_axes, True, self.tile_batch_size, progress, self.accumulation_dtype,
                                      on_tile)
