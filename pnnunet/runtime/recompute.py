"""Recomputation (activation checkpointing) for training memory, without nesting autograd nodes.

``recomputed(fn, x)`` returns ``fn(x)`` with its autograd graph built as usual, but none of the tensors
that graph saves for the backward pass is kept: a ``paddle.autograd.saved_tensors_hooks`` pack hook
stores only a running index. When the backward pass first asks for one of them (the unpack hook),
``fn`` runs once more on the kept input, with grad recording on and a second pair of hooks that
collects what that second graph saves, by the same index; the first graph's nodes then read those
tensors, each one handed out once and dropped. The second graph itself is never back-propagated and
is freed right away.

Gradients are the same bit for bit as without recomputation (the same deterministic kernels on the
same inputs, in the same order); the cost is one more forward pass of ``fn``. Unlike a PyLayer whose
backward re-runs ``fn`` under autograd (Paddle's reentrant ``recompute``), no autograd node is created
inside another node's backward that could hold tensors: the nodes made during recomputation save
indices, not tensors. ``saved_tensors_hooks`` exists since Paddle 2.5 and applies to
``PyLayerContext.save_for_backward`` too (the oneDNN convolutions and the training LeakyReLU).
"""

from __future__ import annotations

from collections.abc import Callable

import paddle


class _Segment:
    """The saved tensors of one recomputed call of ``fn``."""

    def __init__(self, fn: Callable, x: paddle.Tensor):
        self.fn, self.x = fn, x
        self.packed = 0
        self.storage: dict[int, paddle.Tensor] | None = None

    def pack(self, tensor: paddle.Tensor) -> int:
        self.packed += 1
        return self.packed - 1

    def unpack(self, index: int) -> paddle.Tensor:
        if self.storage is None:
            self._recompute()
        return self.storage.pop(index)

    def _recompute(self) -> None:
        self.storage, count = {}, [0]

        def keep(tensor):
            self.storage[count[0]] = _sharing_buffer(tensor)
            count[0] += 1

        def never(_):  # the second graph is never back-propagated
            raise RuntimeError("recomputed graph was back-propagated")

        x = self.x.detach()
        x.stop_gradient = self.x.stop_gradient
        # grad recording first: entered the other way round (Paddle 3.3), the hooks are not applied
        with paddle.enable_grad(), paddle.autograd.saved_tensors_hooks(keep, never):
            self.fn(x)
        if count[0] != self.packed:
            raise RuntimeError(f"recomputation saved {count[0]} tensors, the forward pass {self.packed}: "
                               "the recomputed function is not deterministic in what it records")
        self.x = None


def _sharing_buffer(tensor: paddle.Tensor) -> paddle.Tensor:
    """A new tensor of its own on ``tensor``'s buffer. Paddle 2.6 moves the buffer out of the tensor an
    unpack hook returns: a tensor saved twice (a block's output: by its LeakyReLU and by the next
    convolution) would be empty the second time, and a parameter would lose its weights."""
    var_types = paddle.base.core.VarDesc.VarType
    dense = getattr(var_types, "DENSE_TENSOR", None) or var_types.LOD_TENSOR
    out = paddle.base.core.eager.Tensor(tensor.dtype, tensor.shape, tensor.name + "_recomputed", dense, False)
    tensor._share_buffer_to(out)
    return out


def recomputed(fn: Callable[[paddle.Tensor], paddle.Tensor], x: paddle.Tensor) -> paddle.Tensor:
    """``fn(x)`` whose saved activations are computed again in the backward pass (see module doc).

    Without grad recording (inference, ``paddle.no_grad``) or outside the dynamic graph this is just
    ``fn(x)``. ``fn`` must be deterministic in the operations it records (no dropout here).
    """
    if not (paddle.in_dynamic_mode() and paddle.is_grad_enabled()):
        return fn(x)
    segment = _Segment(fn, x)
    with paddle.autograd.saved_tensors_hooks(segment.pack, segment.unpack):
        return fn(x)
