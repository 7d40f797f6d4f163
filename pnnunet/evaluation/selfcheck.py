"""A self-check of the installation on this machine's device, short enough to paste into a bug report.

:func:`run_selfcheck` makes a small synthetic dataset (spheres in noise), plans it with the tiny
preset, preprocesses it, trains a few epochs with the real trainer (float16 autocast on a GPU) and
predicts with the result. Each check gives PASS, FAIL or SKIP with its numbers:

- versions: pnnunet, Paddle, CUDA, cuDNN; the device and its memory
- autocast: the configuration holds the 3D convolutions; on a GPU, a Conv3D / Conv3DTranspose /
  Conv2D under it really produces float16 and instance norm stays float32
- training: 4 epochs x 5 iterations, the training loss falls; iterations per second
- resume: stopped after 2 epochs, the restored state equals the checkpoint exactly, and the run resumed to
  4 epochs has the uninterrupted run's epoch count and learning rates
- static vs eager: the exported static graph (Paddle Inference) and the eager network agree
- reduced vs full precision: float16 (GPU) or bfloat16 (CPU with native bf16) vs float32 predictions
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import pnnunet
from pnnunet.defaults import DEFAULT_TRAINER, checkpoint_path, model_dir_name
from pnnunet.fileio import load_json, write_json_atomic
from pnnunet.imageio import reader_writer_by_name
from pnnunet.inference.case_predictor import CasePredictor
from pnnunet.inference.model_folder import load_model_folder
from pnnunet.inference.static_graph import eager_predict_fn, make_predict_fn
from pnnunet.planning.planner import PLANNER_PRESETS
from pnnunet.planning.run import fingerprint_dataset, plan_dataset
from pnnunet.preprocessing.run import preprocess_dataset
from pnnunet.preprocessing.storage import load_preprocessed_case
from pnnunet.runtime.amp import FP16_OPS, autocast_kwargs
from pnnunet.runtime.architectures import build_network
from pnnunet.runtime.checkpoints import load_checkpoint, optimizer_state_by_structured_names
from pnnunet.runtime.device import import_paddle, pick_device
from pnnunet.runtime.network import load_weights
from pnnunet.runtime.onednn.primitives import bf16_supported
from pnnunet.training.config import make_train_config
from pnnunet.training.trainer import Trainer, TrainingJob

log = logging.getLogger(__name__)

DATASET = "Dataset999_SelfCheck"
CONFIGURATION = "3d_fullres"
NUM_CASES = 5
EPOCHS, ITERATIONS = 4, 5


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL, SKIP, INFO
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def _write_dataset(raw: Path, rng: np.random.Generator) -> None:
    """Spheres (label 1) with a shell (label 2) in a noisy 40^3 volume, spacing 1 mm."""
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    zz, yy, xx = np.mgrid[:40, :40, :40]
    for i in range(NUM_CASES):
        centre = rng.uniform(14, 26, 3)
        r = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        radius = rng.uniform(6, 10)
        seg = np.where(r < radius, 1, np.where(r < radius + 3, 2, 0)).astype(np.uint8)
        img = (100 * (seg == 1) + 50 * (seg == 2) + rng.normal(0, 20, seg.shape)).astype(np.float32)
        for array, path in ((img, raw / "imagesTr" / f"case_{i:03d}_0000.nii.gz"),
                            (seg, raw / "labelsTr" / f"case_{i:03d}.nii.gz")):
            sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    write_json_atomic(raw / "dataset.json", {"channel_names": {"0": "MRI"},
                                             "labels": {"background": 0, "core": 1, "shell": 2},
                                             "numTraining": NUM_CASES, "file_ending": ".nii.gz"})


def _versions(paddle, device: str) -> list[Check]:
    cuda = paddle.version.cuda() if hasattr(paddle.version, "cuda") else "n/a"
    cudnn = paddle.version.cudnn() if hasattr(paddle.version, "cudnn") else "n/a"
    lines = [Check("versions", "INFO", f"pnnunet {pnnunet.__version__}, paddle {paddle.__version__} "
                                       f"(CUDA {cuda}, cuDNN {cudnn}), python {platform.python_version()}, "
                                       f"{platform.machine()}")]
    if device == "gpu":
        props = paddle.device.cuda.get_device_properties()
        lines.append(Check("device", "INFO", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
                                             f"{paddle.device.cuda.device_count()} GPU(s) visible"))
    else:
        lines.append(Check("device", "INFO", f"CPU ({platform.processor() or 'unknown'}), native bf16 "
                                             f"convolutions: {bf16_supported()}; no GPU used"))
    return lines


def _autocast(paddle, device: str) -> Check:
    kwargs = autocast_kwargs(device)
    missing = {"conv3d", "conv3d_transpose", "conv2d", "conv2d_transpose"} - kwargs["custom_white_list"]
    if missing:
        return Check("autocast", "FAIL", f"white list lacks {sorted(missing)}")
    if device != "gpu":
        return Check("autocast", "SKIP", f"no GPU: the configuration lists {sorted(FP16_OPS)} (float16 is only "
                                         "checked on a GPU)")
    x3, x2 = paddle.randn([1, 4, 8, 8, 8]), paddle.randn([1, 4, 8, 8])
    with paddle.amp.auto_cast(**kwargs):
        outs = {"conv3d": paddle.nn.Conv3D(4, 4, 3, padding=1)(x3),
                "conv3d_transpose": paddle.nn.Conv3DTranspose(4, 4, 2, stride=2)(x3),
                "conv2d": paddle.nn.Conv2D(4, 4, 3, padding=1)(x2),
                "instance_norm": paddle.nn.InstanceNorm3D(4)(x3)}
    dtypes = {k: str(v.dtype).replace("paddle.", "") for k, v in outs.items()}
    ok = all(dtypes[k] == "float16" for k in ("conv3d", "conv3d_transpose", "conv2d")) and \
        dtypes["instance_norm"] == "float32"
    return Check("autocast", "PASS" if ok else "FAIL", ", ".join(f"{k} {v}" for k, v in dtypes.items()))


class _Stop(Exception):
    pass


def _train_and_stop(job: TrainingJob, epochs: int) -> None:
    """Train ``job`` and stop after ``epochs`` epochs, as a killed run would (its checkpoints stay)."""
    trainer = Trainer(job)
    run_epoch = trainer._run_epoch

    def run_and_stop(epoch, *args, **kwargs):
        run_epoch(epoch, *args, **kwargs)
        if epoch + 1 >= epochs:
            raise _Stop

    trainer._run_epoch = run_and_stop
    try:
        trainer.fit()
    except _Stop:
        pass


def _state_difference(saved: dict, network, optimizer) -> float:
    """Max |difference| between a checkpoint's network/optimizer state and a live network/optimizer."""
    paddle = import_paddle()
    live = dict(network.state_dict())
    live.update(optimizer_state_by_structured_names(network, optimizer))
    stored = dict(saved["network_weights"])
    stored.update(saved["optimizer_state"])
    worst = 0.0
    for key, value in stored.items():
        if isinstance(value, (paddle.Tensor, np.ndarray)):
            if key not in live:
                if key in saved["network_weights"] or "|" in key:  # a weight or a parameter's optimizer state
                    return float("inf")  # not restored at all
                continue  # Paddle-version bookkeeping outside the per-parameter state
            a, b = np.asarray(live[key].numpy() if hasattr(live[key], "numpy") else live[key]), \
                np.asarray(value.numpy() if hasattr(value, "numpy") else value)
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0)
    return worst


def _resume_check(job: TrainingJob, straight: Trainer) -> Check:
    """Stop after half the epochs, restore: the state equals the checkpoint exactly; resume to the end: the
    epoch count and the learning-rate schedule equal those of the uninterrupted run."""
    paddle = import_paddle()
    half = EPOCHS // 2
    _train_and_stop(job, half)
    latest = checkpoint_path(job.fold_dir, "checkpoint_latest")
    probe = Trainer(job)
    with paddle.utils.unique_name.guard():
        probe._build()
        probe._restore(latest)
        saved = load_checkpoint(latest)
        if paddle.__version__.startswith("2."):
            # Paddle 2.x creates the restored optimizer accumulators only at the next step: compare the weights
            saved = {"network_weights": saved["network_weights"], "optimizer_state": {}}
        difference = _state_difference(saved, probe.network, probe.optimizer)
    resumed = Trainer(job)
    resumed.fit(resume=True)
    same_schedule = resumed.progress.lrs == straight.progress.lrs and resumed.current_epoch == EPOCHS
    ok = difference == 0.0 and same_schedule
    return Check("resume", "PASS" if ok else "FAIL",
                 f"stopped after {half} epochs: restored state differs from the checkpoint by {difference:g}; resumed "
                 f"to epoch {resumed.current_epoch}, learning rates "
                 f"{'equal' if same_schedule else 'differ from'} the uninterrupted run's")


def run_selfcheck(workdir: Path | str, device: str = "auto", progress: bool = False) -> list[Check]:
    """Run every check in ``workdir`` (created; a few MB) on ``device``; returns the checks in order."""
    paddle = import_paddle()
    device = pick_device(device)
    work = Path(workdir)
    raw, pre, res = work / "raw" / DATASET, work / "preprocessed" / DATASET, work / "results" / DATASET
    checks = _versions(paddle, device) + [_autocast(paddle, device)]
    rng = np.random.default_rng(20261202)
    _write_dataset(raw, rng)
    fingerprint_dataset(raw, pre, num_processes=1, progress=False)
    plans = plan_dataset(raw, pre, PLANNER_PRESETS["tiny"])
    dataset_json = load_json(raw / "dataset.json")
    preprocess_dataset(raw, pre, plans, [CONFIGURATION], dataset_json,
                       reader_writer_by_name(plans["image_reader_writer"]), num_processes=1, progress=False)
    cfg = make_train_config(DEFAULT_TRAINER, num_epochs=EPOCHS, iterations_per_epoch=ITERATIONS,
                            val_iterations_per_epoch=1, num_workers=0)

    def job(name: str) -> TrainingJob:
        return TrainingJob(pre, res.parent / name / model_dir_name(DEFAULT_TRAINER, plans["plans_name"],
                                                                   CONFIGURATION),
                           plans, CONFIGURATION, 0, dataset_json, DEFAULT_TRAINER, cfg, device, progress_bar=progress)

    t0 = time.perf_counter()
    straight = Trainer(job("straight"))
    straight.fit()
    seconds = time.perf_counter() - t0
    losses = straight.progress.train_losses
    falling = losses[-1] < losses[0]
    checks.append(Check("training", "PASS" if falling else "FAIL",
                        f"{EPOCHS} epochs x {ITERATIONS} iterations "
                        f"({'float16 autocast' if device == 'gpu' else 'float32'}), "
                        f"train loss {' -> '.join(f'{v:.3f}' for v in losses)}"))
    progress_log = straight.progress
    epoch_seconds = np.array(progress_log.epoch_end_timestamps) - np.array(progress_log.epoch_start_timestamps)
    checks.append(Check("speed", "INFO", f"{ITERATIONS / float(np.median(epoch_seconds)):.2f} iterations/s "
                                         f"(median epoch, batch {straight.plan.batch_size}, patch "
                                         f"{list(straight.plan.patch_size)}); {seconds:.1f} s for the whole run"))

    checks.append(_resume_check(job("resumed"), straight))
    checks += _prediction_checks(straight, pre, device)
    return checks


def _agreement(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(max |x - y| / max |y|, share of voxels with the same argmax label)."""
    rel = float(np.max(np.abs(x.astype(np.float32) - y.astype(np.float32))) / max(float(np.max(np.abs(y))), 1e-12))
    return rel, float(np.mean(np.argmax(x, 0) == np.argmax(y, 0)))


def _prediction_checks(trainer: Trainer, pre: Path, device: str) -> list[Check]:
    model = load_model_folder(trainer.job.model_dir, [0])
    fold = model.folds[0]
    plan = model.plan
    data, _, _ = load_preprocessed_case(pre / plan.data_identifier, "case_000", mmap=False)
    heads = model.labels.num_segmentation_heads

    def build():
        network = build_network(plan.raw, model.num_input_channels, heads, deep_supervision=False)
        load_weights(network, fold.weights)
        network.eval()
        return network

    out = []
    static, backend = make_predict_fn(build, fold.checkpoint_path, model.num_input_channels, len(plan.patch_size),
                                      device if device == "cpu" else "gpu", use_static_graph=True)
    tiles = np.stack([np.asarray(data[(slice(None), *(slice(0, p) for p in plan.patch_size))], np.float32)])
    eager = eager_predict_fn(build())(tiles)
    if backend != "static":
        out.append(Check("static vs eager", "FAIL", "the static graph could not be used on this device: see the "
                                                    "warning above"))
    else:
        rel, same = _agreement(static(tiles), eager)
        out.append(Check("static vs eager", "PASS" if rel < 1e-3 and same > 0.999 else "FAIL",
                         f"one tile: max relative logit difference {rel:.2e}, labels equal in {100 * same:.3f} %"))
    reduced = "fp16" if device == "gpu" else "bf16" if bf16_supported() else None
    if reduced is None:
        out.append(Check("reduced vs full precision", "SKIP", "this CPU has no native bfloat16 convolutions"))
        return out
    full = CasePredictor(build, fold.checkpoint_path, model.num_input_channels, plan.patch_size, heads, device=device,
                         precision="fp32", use_static_graph=False, accumulation_dtype=np.float32)
    low = CasePredictor(build, fold.checkpoint_path, model.num_input_channels, plan.patch_size, heads, device=device,
                        precision=reduced, use_static_graph=False, accumulation_dtype=np.float32)
    mirror = tuple(range(len(plan.patch_size)))
    rel, same = _agreement(low(np.asarray(data), mirror), full(np.asarray(data), mirror))
    out.append(Check(f"{reduced} vs fp32", "PASS" if rel < 5e-2 and same > 0.99 else "FAIL",
                     f"whole case with mirroring ({low.backend} vs {full.backend}): max relative logit difference "
                     f"{rel:.2e}, labels equal in {100 * same:.3f} %"))
    return out
