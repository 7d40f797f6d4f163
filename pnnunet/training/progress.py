"""Per-epoch log, EMA pseudo-Dice and the ``progress.png`` plot (reference §5.7)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pnnunet.fileio import atomic_path

log = logging.getLogger(__name__)


@dataclass
class ProgressLog:
    """Everything logged per epoch; restored from checkpoints on resume."""

    mean_fg_dice: list[float] = field(default_factory=list)
    ema_fg_dice: list[float] = field(default_factory=list)
    dice_per_class: list[list[float]] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    epoch_start_timestamps: list[float] = field(default_factory=list)
    epoch_end_timestamps: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)  # AMP steps skipped for inf/nan gradients
    best_ema: float | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "ProgressLog":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def record_epoch(self, lr: float, start: float, train_loss: float, val_loss: float, dice_per_class: list[float],
                     alpha: float = 0.9, skipped_steps: int = 0) -> bool:
        """Append one epoch; return True if the EMA pseudo-Dice is a new best (strictly greater)."""
        mean_fg = float(np.nanmean(dice_per_class)) if len(dice_per_class) else float("nan")
        ema = mean_fg if not self.ema_fg_dice else alpha * self.ema_fg_dice[-1] + (1 - alpha) * mean_fg
        self.lrs.append(lr)
        self.epoch_start_timestamps.append(start)
        self.epoch_end_timestamps.append(time.time())
        self.train_losses.append(train_loss)
        self.val_losses.append(val_loss)
        # a log resumed from a checkpoint written before this field existed: pad with zeros
        self.skipped_steps.extend([0] * (len(self.train_losses) - 1 - len(self.skipped_steps)))
        self.skipped_steps.append(int(skipped_steps))
        self.dice_per_class.append([float(d) for d in dice_per_class])
        self.mean_fg_dice.append(mean_fg)
        self.ema_fg_dice.append(ema)
        is_best = not math.isnan(ema) and (self.best_ema is None or ema > self.best_ema)
        if is_best:
            self.best_ema = ema
        return is_best

    def epoch_line(self, epoch: int) -> str:
        """One fixed-format line per epoch."""
        dice = ", ".join(f"{d:.4f}" for d in self.dice_per_class[-1])
        secs = self.epoch_end_timestamps[-1] - self.epoch_start_timestamps[-1]
        return (f"epoch {epoch} | train_loss {self.train_losses[-1]:.4f} | val_loss {self.val_losses[-1]:.4f} | "
                f"pseudo_dice [{dice}] | ema {self.ema_fg_dice[-1]:.4f} | lr {self.lrs[-1]:.6g} | "
                f"skipped_steps {self.skipped_steps[-1] if self.skipped_steps else 0} | {secs:.1f} s")

    def plot(self, path: Path) -> None:
        """Write the 3-panel progress plot (losses + pseudo Dice, epoch times, learning rate)."""
        x = np.arange(len(self.train_losses))
        fig = Figure(figsize=(10, 12))  # no pyplot: no global backend, no figure registry
        axes = fig.subplots(3, 1)
        ax = axes[0]
        ax.plot(x, self.train_losses, color="b", label="train loss")
        ax.plot(x, self.val_losses, color="r", label="val loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax2 = ax.twinx()
        ax2.plot(x, self.mean_fg_dice, color="g", ls="dotted", label="pseudo dice")
        ax2.plot(x, self.ema_fg_dice, color="g", label="pseudo dice (EMA)")
        ax2.set_ylabel("pseudo dice")
        ax.legend(loc="upper left")
        ax2.legend(loc="upper right")
        durations = np.array(self.epoch_end_timestamps) - np.array(self.epoch_start_timestamps)
        axes[1].plot(x, durations, color="b")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("epoch time [s]")
        axes[2].plot(x, self.lrs, color="b")
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("learning rate")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
