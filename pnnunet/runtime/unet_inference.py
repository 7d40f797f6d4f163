"""A PlainConvUNet's forward pass for CPU inference through oneDNN, in memory planned once per tile shape.

The eager network allocates every activation as it goes and frees it after: on a CT tile (a 32-feature
64x160x192 stage: 252 MB per activation) that is several GB of fresh memory per tile, which the kernel
page-faults in again each time (a tile took 5-6 s instead of 2; with freed memory kept by the heap the
time is back but the heap's fragmentation holds 4+ GiB). Here the same computation runs as a fixed
sequence of oneDNN primitives ((transposed) convolutions, instance norm + LeakyReLU in place) on
buffers laid out once for the tile shape and reused by every tile:

- per resolution, one buffer of twice the stage's features: the decoder's concatenation
  ``[up, skip]``. The encoder writes its stage output (the skip) straight into the upper half, its
  blocks before the last alternate with the lower half (free until the decoder), and the transposed
  convolution writes into the lower half, so nothing is ever concatenated or copied. A decoder block
  writes over its own input where the convolution works on a reordered copy (always in bfloat16);
- one :class:`~pnnunet.runtime.onednn.primitives.Workspace` for the convolutions' reordered operands
  (bfloat16 input, blocked output) and scratchpads.

Buffers and workspace are the calling thread's, shared by every planned U-Net it runs (the folds of a
model hold one set between them).

A CT tile of the plan above holds 1.38 GiB in all, touched once; a tile then takes 1.7-1.8 s on the
benchmark machine (benchmarks/RESULTS.md). Results equal the eager network's up to float32 rounding
(``tests/runtime/test_unet_inference.py``), with one difference in accuracy: oneDNN's normalisation
statistics accumulate in float32 less carefully than Paddle's (on a 2M-voxel channel of mean 3 and
standard deviation 0.5, the normalised output is off by 3e-3 against Paddle's 2e-4), so prediction uses
this forward for bfloat16 only (:func:`pnnunet.inference.static_graph.bf16_predict_fn`), where rounding
every convolution's operands to bfloat16 (2e-3 relative) dominates both.
Only networks exactly of the plain structure run here (:func:`unsupported_reason` says why not);
everything else keeps the eager network.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
from paddle import nn

from pnnunet.heap import populated_empty
from pnnunet.runtime.network import ConvNormAct, Encoder, PlainConvUNet, StackedConvs
from pnnunet.runtime.onednn.capi import ARG_BIAS, ARG_DST, ARG_SRC, ARG_WEIGHTS, onednn_available
from pnnunet.runtime.onednn.layers import conv_unsupported_reason
from pnnunet.runtime.onednn.primitives import NormActPlan, Workspace, contiguous, output_shape, plan_for

_CONV_PRECISION = {"bf16": "bf16", "fp32": "f32", "f32": "f32"}
_NORMS = (nn.InstanceNorm2D, nn.InstanceNorm3D)


def unsupported_reason(network) -> str | None:
    """Why ``network`` cannot run as a :class:`PlannedUNet`, or None if it can: a :class:`PlainConvUNet`
    whose blocks are convolution → affine instance norm → LeakyReLU, on CPU float32 weights, with oneDNN
    available."""
    if not onednn_available():
        return "oneDNN is not available"
    if not isinstance(network, PlainConvUNet) or type(network.encoder) is not Encoder:
        return f"{type(network).__name__} is not a plain convolutional U-Net"
    stages = list(network.encoder.stages) + list(network.decoder.stages)
    for stage in stages:
        if type(stage) is not StackedConvs:  # (recompute, a training setting, does not matter here)
            return f"stage {type(stage).__name__} is not a stack of plain blocks"
        for block in stage.convs:
            if type(block) is not ConvNormAct:
                return f"block {type(block).__name__} is not convolution → norm → LeakyReLU"
            if not isinstance(block.norm, _NORMS) or block.norm.scale is None or block.norm.bias is None:
                return f"norm {type(block.norm).__name__} is not an affine instance norm"
            if not isinstance(block.nonlin, nn.LeakyReLU) or not block.nonlin._negative_slope >= 0:
                return f"nonlinearity {block.nonlin} is not a LeakyReLU"
    convs = [b.conv for s in stages for b in s.convs] + list(network.decoder.transpconvs) + \
        list(network.decoder.seg_layers)
    for conv in convs:
        reason = conv_unsupported_reason(conv)
        if reason is not None:
            return f"{type(conv).__name__}: {reason}"
        if not conv.weight.place.is_cpu_place():
            return "the weights are not on the CPU"
    return None


class _Pool(threading.local):
    """This thread's activation buffers and workspace, shared by every program that runs in it: runs do
    not overlap within a thread, and the buffers hold nothing from one run to the next. The folds of a
    model (same network, same tile shape) therefore hold one set of buffers, not one each."""

    def __init__(self):
        self.buffers: list[np.ndarray] = []
        self.workspace = Workspace()

    def reserve(self, counts: Sequence[int]) -> list[np.ndarray]:
        """Buffers ``0..len(counts)-1`` with at least ``counts[k]`` float32 values each (grown as needed)."""
        for k, count in enumerate(counts):
            if k == len(self.buffers):
                self.buffers.append(None)
            if self.buffers[k] is None or self.buffers[k].size < count:
                self.buffers[k] = None  # free the smaller one first
                self.buffers[k] = populated_empty(count, np.float32)
        return self.buffers

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers if b is not None) + self.workspace.nbytes


_POOL = _Pool()


def held_bytes() -> int:
    """Bytes this thread's planned U-Nets hold between calls (their shared buffers and workspace)."""
    return _POOL.nbytes


def release_buffers() -> None:
    """Free this thread's shared buffers and workspace (the next call lays them out again)."""
    _POOL.buffers, _POOL.workspace = [], Workspace()


class _Region:
    """``count`` float32 values at ``offset`` (in values) of buffer number ``buffer`` of the pool."""

    def __init__(self, buffer: int, offset: int, count: int, counts: Sequence[int]):
        if offset + count > counts[buffer]:
            raise ValueError("region outside its buffer")
        self.buffer, self.offset, self.count = buffer, offset, count

    def pointer(self, buffers: Sequence[np.ndarray]) -> int:
        return buffers[self.buffer].ctypes.data + 4 * self.offset


class _ConvStep:
    """One (transposed) convolution from a region to a region, optionally followed by norm + LeakyReLU
    in place on its output."""

    def __init__(self, conv: nn.Layer, transposed: bool, x_shape: list[int], precision: str,
                 block: ConvNormAct | None = None):
        self.weight = contiguous(conv.weight.detach())
        self.bias = None if conv.bias is None else contiguous(conv.bias.detach())
        stride = [int(s) for s in conv._stride]
        padding = [int(p) for p in conv._updated_padding]
        self.y_shape = output_shape(transposed, x_shape, self.weight.shape, stride, padding)
        self.plan = plan_for(transposed, x_shape, self.weight.shape, self.y_shape, stride, padding,
                             self.bias is not None, precision)
        self.norm_act = None
        if block is not None:
            norm = block.norm
            self.scale, self.shift = contiguous(norm.scale.detach()), contiguous(norm.bias.detach())
            self.norm_act = NormActPlan(self.y_shape, norm._epsilon, block.nonlin._negative_slope)

    @property
    def may_overwrite_input(self) -> bool:
        """Whether the output may be written over the input: the convolution reads a reordered copy of
        its input, or writes its output to a copy that is reordered into place after it ran."""
        return any(b.arg in (ARG_SRC, ARG_DST) and b.reorder is not None for b in self.plan.forward().bindings)

    def run(self, src: int, dst: int, workspace: Workspace) -> None:
        ptrs = {ARG_SRC: src, ARG_WEIGHTS: self.weight.data_ptr(), ARG_DST: dst}
        if self.bias is not None:
            ptrs[ARG_BIAS] = self.bias.data_ptr()
        self.plan.forward().run(ptrs, workspace=workspace)
        if self.norm_act is not None:
            self.norm_act.run(dst, self.scale.data_ptr(), self.shift.data_ptr(), workspace)

    def release(self) -> None:
        if self.norm_act is not None:
            self.norm_act.release()
            self.norm_act = None


class _Program:
    """The steps and buffers of one input shape ``(1, C, *spatial)``."""

    INPUT, OUTPUT = "input", "output"

    def __init__(self, network: PlainConvUNet, sample_shape: Sequence[int], precision: str):
        self.sample_shape = tuple(int(s) for s in sample_shape)
        enc, dec = network.encoder.stages, network.decoder
        self.steps: list[tuple[_ConvStep, object, object]] = []  # (step, src, dst): regions or INPUT/OUTPUT
        self.counts: list[int] = []  # float32 values of each buffer of the pool this program uses
        try:
            self._build(enc, dec, precision)
        except Exception:
            self.release()
            raise

    def _new_buffer(self, count: int) -> int:
        self.counts.append(int(count))
        return len(self.counts) - 1

    def _region(self, buffer: int, offset: int, count: int) -> _Region:
        return _Region(buffer, offset, count, self.counts)

    def _build(self, enc, dec, precision: str) -> None:
        n, shape, src = len(enc), [1, *self.sample_shape], self.INPUT
        cat, skips = [], []
        # encoder: stage s ends in the upper half of its concatenation buffer; the blocks before the last
        # alternate with the lower half, free until the decoder (the bottleneck has a buffer of its own)
        for s, stage in enumerate(enc):
            steps = []
            for block in stage.convs:
                steps.append(_ConvStep(block.conv, False, shape, precision, block))
                shape = steps[-1].y_shape
            c, vox = shape[1], math.prod(shape[2:])
            if s < n - 1:
                cat.append(self._new_buffer(2 * c * vox))
                target, other = self._region(cat[s], c * vox, c * vox), self._region(cat[s], 0, c * vox)
            else:
                cat.append(None)
                target = self._region(self._new_buffer(c * vox), 0, c * vox)
                other = self._region(self._new_buffer(c * vox), 0, c * vox) if len(steps) > 1 else None
            for b, step in enumerate(steps):  # the last block writes the target
                dst = target if (len(steps) - 1 - b) % 2 == 0 else other
                self.steps.append((step, src, dst))
                src = dst
            skips.append((shape, target))
        # decoder: the transposed convolution writes the lower half, next to the skip. A convolution that
        # reads a reordered copy of its input (always in bfloat16) or writes a copy of its output (both in
        # the workspace) may write over its own input; otherwise the blocks alternate between the two
        # (then dead) halves, and the first one, which reads both, writes a buffer of its own
        for t, stage in enumerate(dec.stages):
            s = n - 2 - t
            skip_shape, upper = skips[s]
            up = _ConvStep(dec.transpconvs[t], True, shape, precision)
            if up.y_shape != skip_shape:
                raise ValueError(f"the transposed convolution gives {up.y_shape}, the skip is {skip_shape}: the "
                                 f"tile shape {list(self.sample_shape)} does not fit the network's strides")
            c, vox = skip_shape[1], math.prod(skip_shape[2:])
            lower = self._region(cat[s], 0, c * vox)
            self.steps.append((up, src, lower))
            src, shape = self._region(cat[s], 0, 2 * c * vox), [1, 2 * c, *skip_shape[2:]]
            for b, block in enumerate(stage.convs):
                step = _ConvStep(block.conv, False, shape, precision, block)
                if step.may_overwrite_input:
                    dst = lower
                elif b == 0:
                    dst = self._region(self._new_buffer(c * vox), 0, c * vox)
                else:
                    dst = upper if src.buffer == cat[s] and src.offset == 0 else lower
                self.steps.append((step, src, dst))
                src, shape = dst, step.y_shape
        head = _ConvStep(dec.seg_layers[len(dec.stages) - 1], False, shape, precision)
        self.steps.append((head, src, self.OUTPUT))
        self.output_shape = head.y_shape

    def run(self, x: np.ndarray, out: np.ndarray) -> None:
        """``x`` (1, C, *spatial) float32 C-contiguous → ``out`` (1, K, *spatial), written in place."""
        buffers, workspace = _POOL.reserve(self.counts), _POOL.workspace
        for step, src, dst in self.steps:
            src_ptr = x.ctypes.data if src is self.INPUT else src.pointer(buffers)
            dst_ptr = out.ctypes.data if dst is self.OUTPUT else dst.pointer(buffers)
            step.run(src_ptr, dst_ptr, workspace)

    def release(self) -> None:
        for step, _, _ in self.steps:
            step.release()
        self.steps = []


class PlannedUNet:
    """Predict function of a :class:`PlainConvUNet` (see the module doc): float32 ``(N, C, *spatial)``
    → ``(N, K, *spatial)`` logits, one sample at a time, in ``precision`` (``"bf16"``: the convolutions'
    operands rounded to bfloat16, float32 accumulation and everything else float32; ``"fp32"``).

    The activation buffers and the workspace belong to the calling thread and are shared by all its
    planned U-Nets (e.g. the folds of a model); they are kept between calls (``keeps_buffers``), grown
    when a larger tile needs more, and freed by :func:`release_buffers`. The primitives of the last tile
    shape are kept too (:meth:`release` frees them).
    """

    keeps_buffers = True

    def __init__(self, network: PlainConvUNet, precision: str = "bf16"):
        reason = unsupported_reason(network)
        if reason is not None:
            raise ValueError(f"this network cannot run as a planned U-Net: {reason}")
        if precision not in _CONV_PRECISION:
            raise ValueError(f"precision must be bf16 or fp32, got {precision!r}")
        self.network, self.precision = network, _CONV_PRECISION[precision]
        self._program: _Program | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != self.network.conv_dim + 2:
            raise ValueError(f"expected a batch of {self.network.conv_dim}D tiles (N, C, *spatial), got {x.shape}")
        program = self._program_for(x.shape[1:])
        out = np.empty((x.shape[0], *program.output_shape[1:]), dtype=np.float32)
        for i in range(x.shape[0]):  # (oneDNN on raw pointers: nothing records autograd)
            program.run(x[i:i + 1], out[i:i + 1])
        return out

    def _program_for(self, sample_shape) -> _Program:
        if self._program is None or self._program.sample_shape != tuple(sample_shape):
            self.release()
            self._program = _Program(self.network, sample_shape, self.precision)
        return self._program

    def release(self) -> None:
        if self._program is not None:
            self._program.release()
            self._program = None
