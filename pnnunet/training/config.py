"""Training settings and the named trainer variants (reference §5.1, §9.2).

A variant is a named set of overrides of :class:`TrainConfig`, not a subclass: upstream's
``nnUNetTrainer_5epochs`` is ``pnnunetTrainer_5epochs`` here (and the upstream name is accepted).
The variants are upstream's: ``NoMirroring``, ``_onlyMirror01`` (mirror axes (0, 1) in 3D, (0,) in
2D, for training and prediction), ``NoDeepSupervision``, ``DiceCELoss_noSmooth`` (Dice smooth 0),
``_probabilisticOversampling`` (each sample forced foreground with the fraction the default rule
gives; ``_033``/``_010``: with 0.33/0.10), ``_<N>epochs`` and ``_<N>epochs_NoMirroring`` (upstream
ships N in :data:`UPSTREAM_EPOCHS` and :data:`UPSTREAM_EPOCHS_NO_MIRRORING`; any N is accepted).
What a variant changes for prediction (its mirror axes) is recorded in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass

from pnnunet.defaults import DEFAULT_TRAINER
from pnnunet.errors import PnnunetError

UPSTREAM_EPOCHS = (1, 5, 10, 20, 50, 100, 250, 500, 750, 2000, 4000, 8000)
UPSTREAM_EPOCHS_NO_MIRRORING = (250, 2000, 4000, 8000)

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
    only_mirror_01: bool = False  # mirror (training and test time) along axes (0, 1) in 3D, (0,) in 2D
    deep_supervision: bool = True
    dice_smooth: float = 1e-5
    # which samples are forced foreground (§5.2): "last" = the last ones of each batch (upstream's default);
    # "probabilistic" = each with probability oversample_foreground; "probabilistic_batch_fraction" = each
    # with the fraction of forced samples "last" gives for the plan's batch size (bs 2 -> 0.5)
    oversampling: str = "last"
    # DEVIATION(nnU-Net §5.1): checkpoint_latest every epoch (upstream: every 50), so that slow CPU
    # runs lose at most one epoch when killed. --save_every changes it.
    save_every: int = 1
    num_workers: int = 2
    seed: int = 12345
    ema_alpha: float = 0.9
    # CPU only: run convolutions (forward and backward) through the oneDNN library inside Paddle's
    # wheel (runtime/onednn/); same numbers up to float32 rounding, ~3.5x faster than eager.
    fast_cpu_convolutions: bool = True
    # CPU only: this many highest-resolution encoder stages keep no activations for the backward pass
    # and compute them again there (runtime/recompute.py): the same gradients bit for bit, less peak
    # RAM (benchmarks/RESULTS.md, "Recomputed encoder stages"), one more forward pass of those stages.
    cpu_recompute_stages: int = 2
    # CPU only: InstanceNorm + LeakyReLU as one autograd node keeping only its output, and the decoder's
    # [up, skip] convolved without concatenation (runtime/network.save_activation_memory): ~2 GiB less on
    # a CT 3d_lowres step (benchmarks/RESULTS.md), float32 rounding apart the same. None (default): where
    # the plan's largest activation reaches 256 MiB (network.saving_activation_memory_pays; not on
    # Hippocampus, where it is slower); True / False: always / never.
    cpu_save_activation_memory: bool | None = None
    # CPU only: the oneDNN convolutions (forward, backward-data, backward-weights) in bfloat16 with
    # float32 accumulation, on CPUs with native bfloat16 (AVX512-BF16 or AMX); parameters, optimizer,
    # normalisation and loss stay float32. None (default): bfloat16 where native, float32 elsewhere
    # (the Hippocampus accuracy check, benchmarks/RESULTS.md); True (--bf16): the same, and a fallback
    # to float32 is reported; False (--fp32): float32 everywhere.
    cpu_bf16: bool | None = None

    def __post_init__(self) -> None:
        for name, (flag, minimum) in _LOWER_BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                raise PnnunetError(f"{flag} {value}: must be a whole number >= {minimum}\n"
                                   f"  fix: {_BOUND_FIXES[name]}")

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})


# the settings a user gives as numbers: (the pnnunet_train flag that sets it, smallest allowed value)
_LOWER_BOUNDS = {"num_epochs": ("--epochs", 1), "iterations_per_epoch": ("--iterations_per_epoch", 1),
                 "val_iterations_per_epoch": ("--val_iterations_per_epoch", 1), "save_every": ("--save_every", 1),
                 "num_workers": ("--num_workers", 0)}
_BOUND_FIXES = {"num_epochs": "train at least one epoch (to only validate a trained fold use --val)",
                "iterations_per_epoch": "give at least one iteration per epoch",
                "val_iterations_per_epoch": "give at least one validation iteration per epoch",
                "save_every": "write checkpoint_latest every N >= 1 epochs (1 = every epoch)",
                "num_workers": "give 0 (augment in the training process) or more worker processes"}


_FIXED_VARIANTS: dict[str, dict] = {
    DEFAULT_TRAINER: {},
    "pnnunetTrainerNoMirroring": {"mirroring": False},
    "pnnunetTrainer_onlyMirror01": {"only_mirror_01": True},
    "pnnunetTrainer_onlyMirror01_1500ep": {"only_mirror_01": True, "num_epochs": 1500},
    "pnnunetTrainerNoDeepSupervision": {"deep_supervision": False},
    "pnnunetTrainerDiceCELoss_noSmooth": {"dice_smooth": 0.0},
    # upstream: oversample = the fraction of forced samples the default rule gives for the batch size
    "pnnunetTrainer_probabilisticOversampling": {"oversampling": "probabilistic_batch_fraction"},
    "pnnunetTrainer_probabilisticOversampling_033": {"oversampling": "probabilistic", "oversample_foreground": 0.33},
    "pnnunetTrainer_probabilisticOversampling_010": {"oversampling": "probabilistic", "oversample_foreground": 0.10},
}
_EPOCHS = re.compile(r"^(?:pnnunet|nnUNet)Trainer_(\d+)epochs?(_NoMirroring)?$")


def trainer_overrides(name: str) -> dict:
    """Overrides for a trainer name: fixed variants, ``…Trainer_<N>epochs[_NoMirroring]``, upstream
    ``nnUNet…`` names."""
    if m := _EPOCHS.match(name):
        return {"num_epochs": int(m.group(1)), **({"mirroring": False} if m.group(2) else {})}
    canonical = name.replace("nnUNetTrainer", DEFAULT_TRAINER, 1) if name.startswith("nnUNetTrainer") else name
    if canonical in _FIXED_VARIANTS:
        return dict(_FIXED_VARIANTS[canonical])
    known = list(_FIXED_VARIANTS) + ["pnnunetTrainer_<N>epochs", "pnnunetTrainer_<N>epochs_NoMirroring"]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise PnnunetError(f"unknown trainer '{name}'\n  fix: {hint}known trainers: {', '.join(known)}")


def make_train_config(trainer: str = DEFAULT_TRAINER, **overrides) -> TrainConfig:
    """TrainConfig for a named variant, then explicit overrides (None = keep)."""
    return TrainConfig().replace(**trainer_overrides(trainer)).replace(**overrides)
