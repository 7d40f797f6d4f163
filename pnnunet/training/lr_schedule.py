"""Polynomial learning-rate schedule, set once per epoch (reference §5.1, §12.7).

``lr(e) = initial_lr · (1 − e / max_epochs) ** exponent`` at the start of epoch ``e`` (0-based).
A resumed run recomputes it from the epoch counter, so no scheduler state needs saving.
"""

from __future__ import annotations


def poly_lr(epoch: int, max_epochs: int, initial_lr: float = 1e-2, exponent: float = 0.9) -> float:
    """Learning rate of epoch ``epoch`` (0-based) out of ``max_epochs`` (§5.1, Appendix B).

    ``poly_lr(0, 1000) == 0.01``, ``poly_lr(999, 1000) ≈ 1.9953e-05``.
    """
    if max_epochs <= 0:
        raise ValueError(f"max_epochs must be positive, got {max_epochs}")
    if not 0 <= epoch <= max_epochs:
        raise ValueError(f"epoch {epoch} is outside [0, {max_epochs}]")
    return initial_lr * (1 - epoch / max_epochs) ** exponent


def set_epoch_lr(
    optimizer, epoch: int, max_epochs: int, initial_lr: float = 1e-2, exponent: float = 0.9
) -> float:
    """Set a Paddle optimizer's learning rate to :func:`poly_lr` for ``epoch``; return it.

    The optimizer must have been created with a float learning rate (not an LRScheduler):
    Paddle's ``Optimizer.set_lr`` refuses schedulers.
    """
    lr = poly_lr(epoch, max_epochs, initial_lr, exponent)
    optimizer.set_lr(lr)
    return lr
