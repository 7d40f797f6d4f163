"""The training loop: epochs, pseudo-Dice, checkpoints, resume and final validation (§5.7–5.10).

:class:`Trainer` is built from values (no I/O in the constructor); :meth:`Trainer.fit` trains and
:meth:`Trainer.final_validation` predicts the fold's held-out cases and writes
``validation/summary.json``. The whole session runs inside ``paddle.utils.unique_name.guard()``
so that optimizer state restores bit-exactly (see checkpoints.py).

On a GPU the steps run under float16 autocast with a GradScaler (:mod:`pnnunet.runtime.amp`); on
a CPU with native bfloat16 the oneDNN convolutions compute in bfloat16 with float32 accumulation
(float32 master weights, optimizer, normalisation and loss; ``config.cpu_bf16``, ``--fp32`` turns it
off), on other CPUs everything is float32. With ``job.dist`` of more than one rank the same trainer runs in every process of
a data-parallel job (:mod:`pnnunet.runtime.distributed`): the network is wrapped in
``paddle.DataParallel``, each rank draws its share of the plan's batch, epoch statistics are
summed over the ranks, rank 0 alone writes checkpoints, logs and plots, and the final validation
is split over the ranks.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

import pnnunet
from pnnunet.dataset.labels import LabelInfo
from pnnunet.defaults import DEFAULT_STEP_SIZE, sibling_model_dir
from pnnunet.errors import PnnunetError
from pnnunet.fileio import atomic_path, remove_stale_temporaries, write_json_atomic
from pnnunet.heap import TrainingHeap, trim_heap
from pnnunet.inference.export_prediction import sigmoid
from pnnunet.inference.sliding_window import check_step_size
from pnnunet.plans import ConfigurationPlan
from pnnunet.preprocessing.previous_stage import check_previous_stage_available, next_stage_folder, num_network_inputs
from pnnunet.preprocessing.storage import list_cases
from pnnunet.runtime import amp
from pnnunet.runtime import checkpoints as ck
from pnnunet.runtime import distributed as dist
from pnnunet.runtime.architectures import build_network
from pnnunet.runtime.device import import_paddle, is_out_of_memory
from pnnunet.runtime.network import (recompute_encoder_stages, save_activation_memory,
                                     saving_activation_memory_pays)
from pnnunet.runtime.onednn.layers import accelerate_convolutions
from pnnunet.runtime.onednn.primitives import bf16_supported, release_plans
from pnnunet.training.augmentation import make_batch_iterators
from pnnunet.training.config import TrainConfig
from pnnunet.training.deep_supervision import ds_weights
from pnnunet.training.loss import DCandBCELoss, DCandCELoss, DeepSupervisionLoss
from pnnunet.training.lr_schedule import set_epoch_lr
from pnnunet.training.pretrained import PretrainedWeights, apply_pretrained_weights, check_pretrained_weights
from pnnunet.training.progress import ProgressLog
from pnnunet.training.sampling import forced_foreground_mask, rotation_and_mirroring
from pnnunet.training.splits import get_fold, load_or_create_splits
from pnnunet.training.validation import summarize_validation, validate_fold

log = logging.getLogger(__name__)


def _as_list(out):
    """The network's outputs as a list (one tensor without deep supervision)."""
    return list(out) if isinstance(out, (list, tuple)) else [out]


def pseudo_dice_counts(logits: np.ndarray, target: np.ndarray, labels: LabelInfo) -> np.ndarray:
    """(tp, fp, fn) per foreground label or region of one validation batch (§5.7), ignored voxels excluded.

    logits : (B, C, *P) highest-resolution output. target : label mode (B, 1, *P) labels; region mode
    (B, R [+1 ignore channel], *P) region maps. Label mode: argmax, one row per foreground label;
    region mode: ``sigmoid > 0.5`` per region, one row per region (as upstream).
    """
    if labels.has_regions:
        pred = sigmoid(logits) > 0.5
        if labels.has_ignore_label:
            mask, tgt = target[:, -1:] == 0, target[:, :-1] != 0
        else:
            mask, tgt = np.ones_like(target[:, :1], dtype=bool), target != 0
        p_all, t_all = pred & mask, tgt & mask
        rows = [(p_all[:, i], t_all[:, i]) for i in range(pred.shape[1])]
    else:
        pred, tgt = logits.argmax(axis=1), target[:, 0]
        mask = tgt != labels.ignore_label if labels.ignore_label is not None else np.ones_like(tgt, bool)
        rows = [((pred == c) & mask, (tgt == c) & mask) for c in labels.foreground_labels]
    stats = np.zeros((len(rows), 3), dtype=np.int64)
    for i, (p, t) in enumerate(rows):
        stats[i] = (np.sum(p & t), np.sum(p & ~t), np.sum(~p & t))
    return stats


@dataclass
class TrainingJob:
    """What one fold's training is about (all paths explicit)."""

    preprocessed_dataset_dir: Path
    model_dir: Path  # $results/DatasetXXX/<Trainer>__<Plans>__<config>
    plans: dict
    configuration: str
    fold: int | str
    dataset_json: dict
    trainer_name: str
    config: TrainConfig = field(default_factory=TrainConfig)
    device: str = "cpu"  # "cpu", "gpu" or "gpu:K"
    progress_bar: bool = True
    dist: dist.DistContext = field(default_factory=dist.DistContext)

    @property
    def fold_dir(self) -> Path:
        return self.model_dir / f"fold_{self.fold}"

    @property
    def plan(self) -> ConfigurationPlan:
        return ConfigurationPlan.from_plans(self.plans, self.configuration)

    @property
    def previous_stage_dir(self) -> Path | None:
        """Cascade: the previous stage's segmentations for this configuration (same trainer and plans
        as this model, as upstream), ``<previous model>/predicted_next_stage/<configuration>``."""
        previous = self.plan.previous_stage
        if not previous:
            return None
        return next_stage_folder(sibling_model_dir(self.model_dir, previous), self.configuration)


def _check_compatible(ckpt: dict, job: TrainingJob, path: Path, check_schedule: bool = True) -> None:
    """Refuse a checkpoint made with other plans; with ``check_schedule`` (resuming, --c) also one trained
    for another number of epochs. Validating a finished checkpoint (--val) does not depend on the schedule."""
    problem = ck.plan_mismatch(ckpt, job.configuration, job.plans, job.dataset_json)
    if problem is not None:
        raise PnnunetError(f"{path}: {problem}\n  fix: retrain without --c (or in a new output folder), or restore "
                           "the plans file and dataset.json the checkpoint was made with")
    if check_schedule and ckpt.get("inference_only"):
        raise PnnunetError(f"{path}: holds only the network weights of a finished model (no optimizer state), so "
                           "training cannot resume from it\n  fix: start a new training from it with "
                           f"--pretrained_weights {path} (in another output folder), or train without --c")
    stored = ckpt.get("init_args", {})
    if check_schedule and stored.get("num_epochs") not in (None, job.config.num_epochs):
        raise PnnunetError(f"{path}: was trained for {stored['num_epochs']} epochs, now {job.config.num_epochs} "
                           "requested\n  fix: resume with the same number of epochs (--epochs "
                           f"{stored['num_epochs']}; the LR schedule depends on it)")


class Trainer:
    def __init__(self, job: TrainingJob):
        self.job = job
        self.cfg = job.config
        self.plan = job.plan
        self.labels = LabelInfo.from_dataset_json(job.dataset_json)
        self.num_input_channels = num_network_inputs(job.dataset_json, self.plan.previous_stage)
        self.num_heads = self.labels.num_segmentation_heads
        self.progress = ProgressLog()
        self.heap: TrainingHeap | None = None  # CPU training's heap policy while fit() trains
        self.current_epoch = 0
        self.pretrained_weights: PretrainedWeights | None = None  # applied to a fresh (not resumed) network
        self._split: tuple[list[str], list[str]] | None = None  # see split()
        self.dist = job.dist
        self.precision, fallback = amp.training_precision(
            job.device, self.cfg.cpu_bf16, self.cfg.fast_cpu_convolutions,
            bf16_native=self.cfg.cpu_bf16 is not False and not amp.amp_enabled_for(job.device) and bf16_supported())
        self.precision_fallback = fallback  # also named in fit()'s header line, which the training log holds
        if fallback is not None:
            log.warning(fallback)
        self.skipped_steps = 0  # AMP steps skipped because of inf/nan gradients, this epoch
        self.batch_size, self.oversample = self._batch_and_oversample()

    def _batch_and_oversample(self) -> tuple[int, float]:
        """This rank's batch size and foreground fraction (§5.2). Probabilistic oversampling: every
        rank keeps the fraction (upstream); ``probabilistic_batch_fraction``: the fraction of forced
        samples the default rule gives for the plan's batch size (bs 2 → 0.5), as upstream's
        ``nnUNetTrainer_probabilisticOversampling``."""
        cfg = self.cfg
        if cfg.oversampling not in ("last", "probabilistic", "probabilistic_batch_fraction"):
            raise PnnunetError(f"unknown oversampling '{cfg.oversampling}'\n  fix: use last, probabilistic or "
                               "probabilistic_batch_fraction")
        if cfg.oversampling == "last":
            return dist.rank_batch_and_oversample(self.plan.batch_size, self.dist.world_size, self.dist.rank,
                                                  cfg.oversample_foreground)
        fraction = cfg.oversample_foreground
        if cfg.oversampling == "probabilistic_batch_fraction":
            fraction = float(np.mean(forced_foreground_mask(self.plan.batch_size, cfg.oversample_foreground)))
        return dist.rank_batch_sizes(self.plan.batch_size, self.dist.world_size)[self.dist.rank], fraction

    # ---- building blocks -------------------------------------------------------------------
    def build(self) -> None:
        """Network (``self.network``; ``self.model`` is what the steps call: the network, or its
        ``paddle.DataParallel`` wrapper), optimizer, loss and GradScaler. Call it inside
        ``paddle.utils.unique_name.guard()`` after seeding (as :meth:`fit` does)."""
        paddle = import_paddle()
        ddp = self.dist.is_distributed
        self.network = build_network(self.plan.raw, self.num_input_channels, self.num_heads,
                                     deep_supervision=self.cfg.deep_supervision)
        log.info("network %s, %s parameters", type(self.network).__name__,
                 f"{sum(int(np.prod(p.shape)) for p in self.network.parameters()):,}")
        if self.job.device == "cpu" and self.cfg.fast_cpu_convolutions:
            low = "bf16" if self.precision == amp.CPU_BF16 else "f32"  # the epoch's validation patches too
            log.debug("CPU: %d convolution layers run through oneDNN (%s)", accelerate_convolutions(
                self.network, inference_precision=low, training_precision=low), low)
        if self.job.device == "cpu":
            log.debug("CPU: %d encoder stage(s) recomputed in the backward pass",
                      recompute_encoder_stages(self.network, self.cfg.cpu_recompute_stages))
            save = self.cfg.cpu_save_activation_memory
            if save is None:
                save = saving_activation_memory_pays(self.plan.batch_size, self.plan.arch_kwargs["features_per_stage"],
                                                     self.plan.patch_size)
            if save:
                log.info("CPU: %d blocks save activation memory (fused norm + LeakyReLU, no decoder concatenation)",
                         save_activation_memory(self.network))
        # the optimizer's global-norm clip runs inside optimizer.step(), i.e. after the scaler's unscale_
        self.optimizer = paddle.optimizer.Momentum(
            learning_rate=self.cfg.initial_lr, momentum=self.cfg.momentum, use_nesterov=True,
            weight_decay=paddle.regularizer.L2Decay(self.cfg.weight_decay), parameters=self.network.parameters(),
            grad_clip=paddle.nn.ClipGradByGlobalNorm(self.cfg.grad_clip_norm))
        # without deep supervision: one output, one target, weight 1 (upstream's NoDeepSupervision)
        weights = ds_weights(self.plan.arch_kwargs["n_stages"], ddp=ddp) if self.cfg.deep_supervision else [1.0]
        self.loss = DeepSupervisionLoss(self._make_loss(ddp), weights)
        # every parameter gets a gradient every step (lowest DS weight 1e-6 under DDP): no graph traversal;
        # without deep supervision the lower segmentation heads get none, so DataParallel must look for them
        self.model = (paddle.DataParallel(self.network, find_unused_parameters=not self.cfg.deep_supervision)
                      if ddp else self.network)
        self.autocast = amp.autocast_kwargs(self.job.device)
        self.scaler = amp.make_grad_scaler(self.job.device)

    _build = build

    def _make_loss(self, ddp: bool):
        """Region mode: DC + BCE (sigmoid Dice with background, §5.6); label mode: DC + CE."""
        if self.labels.has_regions:
            return DCandBCELoss(batch_dice=self.plan.batch_dice, use_ignore_label=self.labels.has_ignore_label,
                                smooth=self.cfg.dice_smooth, ddp=ddp)
        return DCandCELoss(batch_dice=self.plan.batch_dice, ignore_label=self.labels.ignore_label,
                           smooth=self.cfg.dice_smooth, ddp=ddp)

    @property
    def evaluated_classes(self) -> list:
        """What the pseudo-Dice is computed for: the foreground regions or labels."""
        return list(self.labels.foreground_regions if self.labels.has_regions else self.labels.foreground_labels)

    def _payload(self) -> dict:
        return {
            "network_weights": self.network.state_dict(),
            "optimizer_state": ck.optimizer_state_by_structured_names(self.network, self.optimizer),
            "grad_scaler_state": self.scaler.state_dict() if self.scaler is not None else None,
            "precision": self.precision,
            "world_size": self.dist.world_size,
            "logging": self.progress.to_dict(),
            "current_epoch": self.current_epoch,
            "init_args": {"plans": self.job.plans, "configuration": self.job.configuration, "fold": self.job.fold,
                          "dataset_json": self.job.dataset_json, "num_epochs": self.cfg.num_epochs},
            "train_config": self.cfg.__dict__,
            "trainer_name": self.job.trainer_name,
            "inference_allowed_mirroring_axes": self.mirror_axes,
            "pnnunet_version": pnnunet.__version__,
        }

    def _save(self, name: str) -> None:
        if self.dist.is_main:  # one writer in a data-parallel job
            ck.save_checkpoint(ck.checkpoint_path(self.job.fold_dir, name), self._payload())

    def _restore(self, path: Path, state: dict | None = None) -> None:
        """Restore the training state from ``path`` (``state``: its already loaded and checked content)."""
        if state is None:
            state = ck.load_checkpoint(path)
            _check_compatible(state, self.job, path)
        self.network.set_state_dict(state["network_weights"])
        ck.load_optimizer_state(self.network, self.optimizer, state["optimizer_state"])
        if self.scaler is not None and state.get("grad_scaler_state"):
            self.scaler.load_state_dict(state["grad_scaler_state"])
        self.progress = ProgressLog.from_dict(state["logging"])
        self.current_epoch = int(state["current_epoch"])
        log.info("resumed from %s at epoch %d", path.name, self.current_epoch)
        if state.get("precision", self.precision) != self.precision:
            log.warning("%s was trained in %s so far, continuing in %s", path.name, state["precision"], self.precision)

    @property
    def mirror_axes(self) -> list[int]:
        """Training's mirror axes, recorded in the checkpoint as the test-time mirroring axes."""
        if not self.cfg.mirroring:
            return []
        if self.cfg.only_mirror_01:
            return [0] if len(self.plan.patch_size) == 2 else [0, 1]
        return list(rotation_and_mirroring(self.plan.patch_size)["mirror_axes"])

    # ---- steps --------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> float:
        """One optimizer step on ``batch`` (``data`` and the deep-supervision ``target`` list, this
        rank's share); returns the loss. Counts AMP steps skipped for inf/nan gradients in
        ``self.skipped_steps``; running out of memory is a :class:`PnnunetError` with the fix."""
        try:
            loss, skipped = self._forward_backward_step(batch)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is translated, the rest re-raised
            if is_out_of_memory(e):
                raise self._out_of_memory_error(batch, e, "a training step") from None
            raise
        self.skipped_steps += int(skipped)
        return loss

    def _forward_backward_step(self, batch: dict) -> tuple[float, bool]:
        paddle = import_paddle()
        data = paddle.to_tensor(batch["data"])
        targets = [paddle.to_tensor(np.asarray(t, dtype=np.int64)) for t in batch["target"]]
        self.optimizer.clear_grad()
        with paddle.amp.auto_cast(**self.autocast):
            out = _as_list(self.model(data))
            loss = self.loss(out, targets)
        skipped = amp.scaled_backward_and_step(loss, self.optimizer, self.scaler)
        value = float(loss.numpy())
        if self.heap is not None:
            del data, targets, out, loss
            if self.heap.after_step():  # trims; after the first step, keeps freed memory if that fits (heap.py)
                log.info("CPU heap: freed memory %s between steps (%s)",
                         "kept" if self.heap.decision == "reuse" else "returned", self.heap.reason)
        return value, skipped

    _train_step = train_step

    def _out_of_memory_error(self, batch: dict, error: BaseException, what: str) -> PnnunetError:
        shape = list(np.shape(batch["data"]))
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        dataset = self.job.preprocessed_dataset_dir.name
        where = f"the GPU ({self.job.device})" if amp.amp_enabled_for(self.job.device) else "host memory (CPU)"
        more = (f" or more GPUs (-num_gpus {2 * self.dist.world_size} splits the batch of {self.plan.batch_size})"
                if amp.amp_enabled_for(self.job.device) else "")
        return PnnunetError(
            f"out of memory in {where} during {what}: a batch of shape {shape} (batch {self.batch_size} "
            f"of patch {list(self.plan.patch_size)}, {self.precision}) of configuration {self.job.configuration} "
            f"does not fit ({first})\n  fix: plan for less memory, e.g. pnnunet_plan_and_preprocess -d {dataset} "
            f"-gpu_memory_target 6 (smaller patch and batch), then train again{more}; close other programs using "
            "the device")

    def _val_step(self, batch: dict) -> tuple[float, np.ndarray]:
        """Loss and (tp, fp, fn) per foreground class of the highest-resolution output (§5.7)."""
        try:
            return self._validation_batch(batch)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is translated, the rest re-raised
            if is_out_of_memory(e):
                raise self._out_of_memory_error(batch, e, "a validation step of the epoch") from None
            raise

    def _validation_batch(self, batch: dict) -> tuple[float, np.ndarray]:
        paddle = import_paddle()
        data = paddle.to_tensor(batch["data"])
        targets = [paddle.to_tensor(np.asarray(t, dtype=np.int64)) for t in batch["target"]]
        with paddle.amp.auto_cast(**self.autocast):
            out = _as_list(self.model(data))
            loss = float(self.loss(out, targets).numpy())
        return loss, pseudo_dice_counts(out[0].astype("float32").numpy(), np.asarray(batch["target"][0]),
                                        self.labels)

    # ---- pretrained weights (--pretrained_weights) ----------------------------------------------
    def _pretrained_target(self) -> tuple[str, str, str]:
        """(dataset, plans name, configuration) named in a pretrained-weights mismatch."""
        return (self.job.preprocessed_dataset_dir.name, str(self.job.plans.get("plans_name", "?")),
                self.job.configuration)

    def check_pretrained(self, pretrained: PretrainedWeights) -> None:
        """Refuse ``pretrained`` unless it fits this job's network (built here for the check and dropped),
        before anything of the fold is written; then keep it for :meth:`fit`."""
        paddle = import_paddle()
        with paddle.utils.unique_name.guard():
            network = build_network(self.plan.raw, self.num_input_channels, self.num_heads,
                                    deep_supervision=self.cfg.deep_supervision)
        check_pretrained_weights(network, pretrained, *self._pretrained_target())
        del network
        self.pretrained_weights = pretrained

    # ---- main entry points --------------------------------------------------------------------
    def fit(self, resume: bool = False) -> None:
        paddle = import_paddle()
        job, cfg = self.job, self.cfg
        train_ids, val_ids = self.check_inputs()
        resume_from = ck.latest_existing(job.fold_dir) if resume else None
        if resume_from is not None:  # a damaged or foreign checkpoint is refused before anything is written
            state = ck.load_checkpoint(resume_from)
            _check_compatible(state, job, resume_from)
        job.fold_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            remove_stale_temporaries(job.fold_dir)  # e.g. a checkpoint write cut by kill -9
            self._write_model_files()
        log.info("pnnunet %s, paddle %s, device %s, precision %s%s | %s fold %s: %d training, %d validation cases",
                 pnnunet.__version__, paddle.__version__, job.device, self.precision,
                 f" ({self.precision_fallback})" if self.precision_fallback else "", job.configuration, job.fold,
                 len(train_ids), len(val_ids))
        log.info("patch %s, batch %d, %d epochs x %d iterations (val %d)", list(self.plan.patch_size),
                 self.plan.batch_size, cfg.num_epochs, cfg.iterations_per_epoch, cfg.val_iterations_per_epoch)
        if self.dist.is_distributed:
            log.info("data parallel: %d processes, batch per process %s (foreground-forced samples %s)",
                     self.dist.world_size, dist.rank_batch_sizes(self.plan.batch_size, self.dist.world_size),
                     [round(b * dist.rank_batch_and_oversample(self.plan.batch_size, self.dist.world_size, r,
                                                               cfg.oversample_foreground)[1])
                      for r, b in enumerate(dist.rank_batch_sizes(self.plan.batch_size, self.dist.world_size))])
        with paddle.utils.unique_name.guard():
            paddle.seed(cfg.seed)
            self.build()
            if resume_from is not None:
                self._restore(resume_from, state)
                del state
                if self.pretrained_weights is not None:
                    log.info("resuming from %s: --pretrained_weights not applied again (they initialised the "
                             "training that wrote it)", resume_from)
            else:
                if resume:
                    log.info("no checkpoint in %s: starting from scratch", job.fold_dir)
                if self.pretrained_weights is not None:
                    apply_pretrained_weights(self.network, self.pretrained_weights, *self._pretrained_target())
            if self.current_epoch >= cfg.num_epochs:
                log.info("training already finished (%d epochs)", self.current_epoch)
                return
            with self._training_heap():  # workers fork inside: they inherit the returning policy
                folder = job.preprocessed_dataset_dir / self.plan.data_identifier
                # batch k of either stream is drawn and augmented from (seed, k) alone: a run resumed at epoch e
                # starts at e x iterations and gets the batches the uninterrupted run got (bit-exact resume)
                train_iter, val_iter = make_batch_iterators(
                    folder, self.plan, train_ids, val_ids, cfg.num_workers,
                    seed=dist.rank_seed(cfg.seed, self.dist.rank),
                    first_train_batch=self.current_epoch * cfg.iterations_per_epoch,
                    first_val_batch=self.current_epoch * cfg.val_iterations_per_epoch,
                    batch_size=self.batch_size, oversample_foreground=self.oversample,
                    probabilistic_oversampling=cfg.oversampling != "last", mirroring=cfg.mirroring,
                    mirror_axes=self.mirror_axes or None, deep_supervision=cfg.deep_supervision,
                    previous_stage_folder=job.previous_stage_dir, foreground_labels=self.labels.foreground_labels,
                    regions=self.labels.foreground_regions if self.labels.has_regions else None,
                    ignore_label=self.labels.ignore_label,
                    queued_per_worker=1 if job.device == "cpu" else None)
                try:
                    for epoch in range(self.current_epoch, cfg.num_epochs):
                        self._run_epoch(epoch, train_iter, val_iter)
                finally:
                    for it in (train_iter, val_iter):
                        if hasattr(it, "close"):
                            it.close()
            self._save("checkpoint_final")
            if self.dist.is_main:
                ck.remove_if_exists(ck.checkpoint_path(job.fold_dir, "checkpoint_latest"))
            dist.barrier(self.dist, "checkpoint_final")  # the other ranks validate with it
            log.info("training finished: %d epochs, best EMA pseudo-Dice %.4f", self.current_epoch,
                     self.progress.best_ema or float("nan"))

    def _run_epoch(self, epoch: int, train_iter, val_iter) -> None:
        paddle = import_paddle()
        cfg = self.cfg
        start = time.time()
        lr = set_epoch_lr(self.optimizer, epoch, cfg.num_epochs, cfg.initial_lr)
        self.network.train()
        losses = []
        self.skipped_steps = 0
        bar = tqdm(range(cfg.iterations_per_epoch), desc=f"epoch {epoch}", leave=False,
                   disable=not (self.job.progress_bar and self.dist.is_main))
        for _ in bar:
            losses.append(self.train_step(next(train_iter)))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        self.network.eval()
        val_losses, stats = [], np.zeros((len(self.evaluated_classes), 3), dtype=np.int64)
        with paddle.no_grad():
            for _ in range(cfg.val_iterations_per_epoch):
                vl, st = self._val_step(next(val_iter))
                val_losses.append(vl)
                stats += st
        train_loss, val_loss, stats, skipped = self._epoch_totals(losses, val_losses, stats)
        tp, fp, fn = stats[:, 0], stats[:, 1], stats[:, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = (2 * tp / (2 * tp + fp + fn)).tolist()
        is_best = self.progress.record_epoch(lr, start, train_loss, val_loss, dice, cfg.ema_alpha,
                                             skipped_steps=skipped)
        self.current_epoch = epoch + 1
        if self.dist.is_main:
            log.info(self.progress.epoch_line(epoch))
        if is_best:
            if self.dist.is_main:
                log.info("new best EMA pseudo-Dice: %.4f", self.progress.best_ema)
            self._save("checkpoint_best")
        if self.current_epoch % cfg.save_every == 0 and self.current_epoch != cfg.num_epochs:
            self._save("checkpoint_latest")
        if self.dist.is_main:
            self.progress.plot(self.job.fold_dir / "progress.png")
        dist.barrier(self.dist, "epoch")  # the others wait here, not in a collective that times out

    @contextlib.contextmanager
    def _training_heap(self):
        """On CPU, :class:`pnnunet.heap.TrainingHeap` (freed memory returned to the kernel, or kept after the
        first step when the process is small enough: CT-sized steps stay bounded, small ones skip the page
        faults), as ``self.heap`` while it is open."""
        if self.job.device != "cpu":
            yield
            return
        with TrainingHeap(processes=self.dist.world_size) as self.heap:
            try:
                yield
            finally:
                self.heap = None

    def _epoch_totals(self, losses: list[float], val_losses: list[float],
                      stats: np.ndarray) -> tuple[float, float, np.ndarray, int]:
        """(train loss, val loss, pseudo-Dice tp/fp/fn per class, skipped steps) of the epoch over all
        ranks: mean losses, summed counts (one float64 all-reduce). Every rank gets the same numbers,
        so every rank keeps the same progress log and EMA."""
        n_cls = stats.shape[0]
        local = np.concatenate([[np.sum(losses), len(losses), np.sum(val_losses), len(val_losses),
                                 self.skipped_steps], stats.reshape(-1).astype(np.float64)])
        total = dist.sum_over_ranks(local, self.dist)
        train_loss = total[0] / total[1] if total[1] else float("nan")
        val_loss = total[2] / total[3] if total[3] else float("nan")
        skipped = int(round(total[4] / self.dist.world_size))  # ranks skip together (same averaged gradients)
        return float(train_loss), float(val_loss), np.rint(total[5:]).astype(np.int64).reshape(n_cls, 3), skipped

    def check_inputs(self) -> tuple[list[str], list[str]]:
        """The fold's (training, validation) cases, after checking that everything they need exists
        (preprocessed cases; a cascade's previous-stage segmentations). Writes nothing but a missing
        splits_final.json."""
        train_ids, val_ids = self.split()
        if self.job.previous_stage_dir is not None:
            check_previous_stage_available(self.job.previous_stage_dir, sorted(set(train_ids) | set(val_ids)),
                                           self.plan.previous_stage, self.job.configuration, self.job.fold)
        return train_ids, val_ids

    def split(self) -> tuple[list[str], list[str]]:
        """The fold's (training, validation) cases, determined once per Trainer (§5.9). Fold ``all``
        trains and validates on every case and needs no split (any number of cases, as upstream);
        other folds read or create ``splits_final.json``."""
        if self._split is None:
            folder = self.job.preprocessed_dataset_dir / self.plan.data_identifier
            case_ids = list_cases(folder)
            if not case_ids:
                raise PnnunetError(f"{folder}: no preprocessed cases\n  fix: run pnnunet_plan_and_preprocess "
                                   f"-c {self.job.configuration} first")
            if self.job.fold == "all":
                splits = []
            else:
                splits = load_or_create_splits(self.job.preprocessed_dataset_dir, case_ids)
            train_ids, val_ids = get_fold(splits, self.job.fold, case_ids)
            self._split = (list(train_ids), list(val_ids))
        return list(self._split[0]), list(self._split[1])

    def _write_model_files(self) -> None:
        md = self.job.model_dir
        write_json_atomic(md / "plans.json", self.job.plans)
        write_json_atomic(md / "dataset.json", self.job.dataset_json)
        fp = self.job.preprocessed_dataset_dir / "dataset_fingerprint.json"
        if fp.is_file():
            with atomic_path(md / "dataset_fingerprint.json") as tmp:
                shutil.copyfile(fp, tmp)
        write_json_atomic(self.job.fold_dir / "train_config.json",
                          {"trainer": self.job.trainer_name, **self.cfg.__dict__, "device": self.job.device,
                           "precision": self.precision, "num_processes": self.dist.world_size})

    def release_training_state(self) -> None:
        """Drop what only training needs (network, gradients, optimizer state, loss, grad scaler), the
        cached oneDNN convolution primitives (training's patch shapes), and give the freed heap back to
        the kernel: the final validation, run in the same process right after training, rebuilds the
        network from the checkpoint and would otherwise add its memory on top of training's."""
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None:
            optimizer.clear_grad(set_to_zero=False)
        self.network = self.optimizer = self.loss = self.scaler = None
        gc.collect()
        release_plans()
        trim_heap()

    def final_validation(self, checkpoint: str = "checkpoint_final", save_probabilities: bool = False,
                         disable_tta: bool = False, step_size: float = DEFAULT_STEP_SIZE) -> dict:
        """Predict the held-out cases of this fold and write ``validation/summary.json`` (§5.10).

        ``disable_tta``: no test-time mirroring (a deviation, recorded in
        ``validation/validation_settings.json``); ``step_size``: tile overlap (upstream 0.5)."""
        check_step_size(step_size, "--val_step_size")
        paddle = import_paddle()
        self.release_training_state()  # the validation must not add to the training's peak (issue 16)
        path = ck.checkpoint_path(self.job.fold_dir, checkpoint)
        if not path.is_file():
            raise PnnunetError(f"{path}: not found\n  fix: train this fold first (final validation needs "
                               f"{checkpoint}.pdparams)")
        with paddle.utils.unique_name.guard():
            self.build()
            state = ck.load_checkpoint(path)
            _check_compatible(state, self.job, path, check_schedule=False)
            self.network.set_state_dict(ck.weights_as_float32(state["network_weights"]))  # float16 if inference_only
        _, val_ids = self.split()
        mirror_axes = state.get("inference_allowed_mirroring_axes", self.mirror_axes)
        settings = dict(disable_tta=disable_tta, step_size=step_size)
        if not self.dist.is_distributed:
            return validate_fold(self.network, self.job, self.plan, val_ids, mirror_axes, path, save_probabilities,
                                 **settings)
        # data parallel: rank r predicts val_ids[r::N]; rank 0 exports the static graph first (one
        # writer of the export cache) and computes the metrics once every rank is done
        mine = dist.shard(val_ids, self.dist)
        if self.dist.is_main:
            validate_fold(self.network, self.job, self.plan, mine, mirror_axes, path, save_probabilities,
                          after_export=lambda: dist.barrier(self.dist, "exported"), evaluate=False, **settings)
        else:
            dist.barrier(self.dist, "exported")
            validate_fold(self.network, self.job, self.plan, mine, mirror_axes, path, save_probabilities,
                          evaluate=False, **settings)
        dist.barrier(self.dist, "validated")
        if not self.dist.is_main:
            return {}
        return summarize_validation(self.job, path, mirror_axes, disable_tta, step_size, len(val_ids))
