"""Training settings and the named trainer variants (reference §5.1, §9.2).

A variant is a named set of overrides of :class:`TrainConfig`, not a subclass: upstream's
``nnUNetTrainer_5epochs`` is ``pnnunetTrainer_5epochs`` here (and the upstream name is accepted).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass

from pnnunet.defaults import DEFAULT_TRAINER
from pnnunet.errors import PnnunetError



@dataclass(frozen=True)
class TrainConfig:
    num_epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    initial_lr: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip_norm: float = 12.0
    oversample_foreground: float = 0.33
    mirroring: bool = True
    # DEVIATION(nnU-Net §5.1): checkpoint_latest every epoch (upstream: every 50), so that slow CPU
    # runs lose at most one epoch when killed. --save_every changes it.
    save_every: int = 1
    num_workers: int = 2
    seed: int = 12345
    ema_alpha: float = 0.9
    # CPU only: run convolutions (forward and backward) through the oneDNN library inside Paddle's
    # wheel (runtime/onednn/); same numbers up to float32 rounding, ~3.5x faster than eager.
    fast_cpu_convolutions: bool = True
    # CPU only (--bf16): the oneDNN convolutions (forward, backward-data, backward-weights) in
    # bfloat16 with float32 accumulation, on CPUs with native bfloat16 (AVX512-BF16 or AMX);
    # parameters, optimizer, normalisation and loss stay float32. Elsewhere training stays float32
    # and says so. Off by default until the Hippocampus accuracy check holds (issue 15).
    cpu_bf16: bool = False

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})


_FIXED_VARIANTS: dict[str, dict] = {
    DEFAULT_TRAINER: {},
    "pnnunetTrainerNoMirroring": {"mirroring": False},
}
_EPOCHS = re.compile(r"^(?:pnnunet|nnUNet)Trainer_(\d+)epochs$")


def trainer_overrides(name: str) -> dict:
    """Overrides for a trainer name: fixed variants, ``…Trainer_<N>epochs``, upstream ``nnUNet…`` names."""
    if m := _EPOCHS.match(name):
        return {"num_epochs": int(m.group(1))}
    canonical = name.replace("nnUNetTrainer", DEFAULT_TRAINER, 1) if name.startswith("nnUNetTrainer") else name
    if canonical in _FIXED_VARIANTS:
        return dict(_FIXED_VARIANTS[canonical])
    known = list(_FIXED_VARIANTS) + ["pnnunetTrainer_<N>epochs"]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise PnnunetError(f"unknown trainer '{name}'\n  fix: {hint}known trainers: {', '.join(known)}")


def make_train_config(trainer: str = DEFAULT_TRAINER, **overrides) -> TrainConfig:
    """TrainConfig for a named variant, then explicit overrides (None = keep)."""
    return TrainConfig().replace(**trainer_overrides(trainer)).replace(**overrides)
