"""Training augmentation and background batch generation (reference §5.2, §5.4).

The pipeline is nnU-Net v2 ≤ 2.4's list of batchgenerators (v1, numpy) transforms — see the
"Differences ≤ v2.4 and [v1]" paragraph of §5.4: spline order 3 for images and order 1 for labels
in the spatial transform, cubic upsampling in the low-resolution simulation, nearest (order 0)
deep-supervision targets. Transforms run on whole batches inside the augmenter's worker processes
(batchgenerators ``MultiThreadedAugmenter``; no torch needed, no ``NumpyToTensor``); batches reach
the trainer as numpy arrays.

DEVIATION(nnU-Net §5.4): v2 ≥ 2.5 uses batchgeneratorsv2 (torch) transforms with trilinear
``grid_sample``; pnnunet keeps the numpy v1 transforms of v2 ≤ 2.4 so that no torch is needed.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Sequence

import numpy as np
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import RemoveLabelTransform, RenameTransform

from pnnunet.plans import ConfigurationPlan
from pnnunet.training.cascade_augmentation import cascade_transforms
from pnnunet.training.dataloading import NNUNetPatchLoader
from pnnunet.training.deep_supervision import downsample_seg_for_ds, ds_scales
from pnnunet.training.regions import segmentation_to_regions
from pnnunet.training.sampling import rotation_and_mirroring

log = logging.getLogger(__name__)

# ---- pnnunet's own transforms (batchgenerators v1 interface: __call__(**data_dict) -> dict) ----------


class Convert3DTo2D(AbstractTransform):
    """Dummy 2D: fold axis 0 into the channels, ``(B, C, X, Y, Z) → (B, C·X, Y, Z)`` (§5.4 step 1)."""

    def __init__(self, keys: Sequence[str] = ("data", "seg")):
        self.keys = tuple(keys)

    def __call__(self, **data_dict):
        for k in self.keys:
            shape = data_dict[k].shape
            if len(shape) != 5:
                raise ValueError(f"Convert3DTo2D needs (B, C, X, Y, Z) arrays, '{k}' has shape {shape}")
            data_dict[f"orig_shape_{k}"] = shape
            data_dict[k] = data_dict[k].reshape(shape[0], shape[1] * shape[2], shape[3], shape[4])
        return data_dict


class Convert2DTo3D(AbstractTransform):
    """Undo :class:`Convert3DTo2D`, keeping the (possibly new) in-plane size (§5.4 step 3)."""

    def __init__(self, keys: Sequence[str] = ("data", "seg")):
        self.keys = tuple(keys)

    def __call__(self, **data_dict):
        for k in self.keys:
            b, c, x = data_dict.pop(f"orig_shape_{k}")[:3]
            data_dict[k] = data_dict[k].reshape(b, c, x, *data_dict[k].shape[-2:])
        return data_dict


class MaskOutsideSeg(AbstractTransform):
    """Set image channels to 0 where ``seg[:, 0] < 0`` (outside the non-zero mask; §5.4 step 12)."""

    def __init__(self, channels: Sequence[int], value: float = 0.0):
        self.channels = tuple(int(c) for c in channels)
        self.value = value

    def __call__(self, **data_dict):
        outside = data_dict["seg"][:, 0] < 0
        for c in self.channels:
            data_dict["data"][:, c][outside] = self.value
        return data_dict


class ConvertSegmentationToRegions(AbstractTransform):
    """``target`` (B, 1, *P) labels → (B, R [+1 ignore], *P) binary region maps (region mode, §1.4);
    after augmentation, before the deep-supervision targets (upstream's order)."""

    def __init__(self, regions: Sequence, ignore_label: int | None = None):
        self.regions = [tuple(r) if isinstance(r, (list, tuple)) else int(r) for r in regions]
        self.ignore_label = ignore_label

    def __call__(self, **data_dict):
        data_dict["target"] = segmentation_to_regions(np.asarray(data_dict["target"]), self.regions,
                                                      self.ignore_label)
        return data_dict


class TargetsForDeepSupervision(AbstractTransform):
    """``target`` → int16 list, one per deep-supervision scale, nearest (order 0) (§5.4 step 16, §5.5)."""

    def __init__(self, scales: Sequence[Sequence[float]]):
        self.scales = [list(s) for s in scales]

    def __call__(self, **data_dict):
        target = np.asarray(data_dict["target"]).astype(np.int16, copy=False)
        data_dict["target"] = downsample_seg_for_ds(target, self.scales)
        return data_dict


class PerBatchRandomState(AbstractTransform):
    """Run ``transform`` on a batch with global random states seeded from ``(seed, batch_index)``, restoring
    the caller's.

    batchgenerators v1 transforms draw from the global ``np.random`` functions and, in places (noise
    variance, low-resolution zoom), from Python's ``random`` module. Seeding both for every batch from its
    index (set by :class:`NNUNetPatchLoader`) makes batch ``k``'s augmentation a function of ``(seed, k)``
    alone: the same in a worker process or in the calling one, and the same after a training resumed at an
    epoch boundary as in the uninterrupted run. The caller's global states are left as they were.
    """

    def __init__(self, transform, seed: int):
        self.transform = transform
        self.seed = int(seed)

    def __call__(self, **data_dict):
        outer_np, outer_py = np.random.get_state(), random.getstate()
        np_seed, py_seed = np.random.SeedSequence([self.seed, int(data_dict["batch_index"])]).generate_state(2)
        np.random.seed(int(np_seed))
        random.seed(int(py_seed))
        try:
            return self.transform(**data_dict)
        finally:
            np.random.set_state(outer_np)
            random.setstate(outer_py)


# ---- pipelines -------------------------------------------------------------------------------------


def training_transforms(patch_size: Sequence[int], rotation: Sequence[Sequence[float]], dummy_2d: bool,
                        mirror_axes: Sequence[int] | None, deep_supervision_scales: Sequence[Sequence[float]],
                        use_mask_for_norm: Sequence[bool] | None = None, *, order_data: int = 3,
                        order_seg: int = 1, border_val_seg: int = -1,
                        cascade_labels: Sequence[int] | None = None, regions: Sequence | None = None,
                        ignore_label: int | None = None) -> Compose:
    """nnU-Net v2 ≤ 2.4's training augmentation (§5.4, paragraph "Differences ≤ v2.4 and [v1]").

    Parameters
    ----------
    patch_size : final patch ``P`` (2 or 3 axes); the input batch is the loader's enlarged crop
    rotation : ((lo, hi) x, (lo, hi) y, (lo, hi) z) in radians, from
        :func:`pnnunet.training.sampling.rotation_and_mirroring`
    dummy_2d : rotate/scale in-plane only (axis 0 folded into channels around the spatial transform)
    mirror_axes : spatial axes to mirror (each with p 0.5); None or empty: no mirroring
    deep_supervision_scales : per-output scales (:func:`pnnunet.training.deep_supervision.ds_scales`)
    use_mask_for_norm : per channel; masked channels are set to 0 outside the non-zero mask
    cascade_labels : cascade stage only: the foreground labels; seg channel 1 (the previous stage's
        segmentation, augmented spatially with the labels) becomes one-hot input channels with
        random morphology and component removal (§5.4 step 14)
    regions : region mode: the foreground regions; ``target`` becomes binary region maps (plus an
        ignore channel, last, when ``ignore_label`` is given)

    Input dict: ``data`` float32 (B, C, *P0), ``seg`` int16 (B, 1, *P0) (cascade: (B, 2, *P0)) with -1
    outside the image.
    Output dict: ``data`` float32 (B, C, *P) (cascade: C + len(cascade_labels) channels); ``target``
    list of int16 (B, 1, *P_s), labels only (no -1 left) (region mode: (B, R [+1], *P_s) of 0/1), plus
    the loader's ``keys``.
    """
    patch_size = tuple(int(p) for p in patch_size)
    spatial_patch = patch_size[1:] if dummy_2d else patch_size
    ignore_axes = (0,) if dummy_2d else None
    (rx, ry, rz) = (tuple(r) for r in rotation)
    transforms: list = [Convert3DTo2D()] if dummy_2d else []
    transforms.append(SpatialTransform(
        spatial_patch, patch_center_dist_from_border=None, do_elastic_deform=False, alpha=(0, 0), sigma=(0, 0),
        do_rotation=True, angle_x=rx, angle_y=ry, angle_z=rz, p_rot_per_axis=1,
        do_scale=True, scale=(0.7, 1.4), border_mode_data="constant", border_cval_data=0, order_data=order_data,
        border_mode_seg="constant", border_cval_seg=border_val_seg, order_seg=order_seg, random_crop=False,
        p_el_per_sample=0, p_scale_per_sample=0.2, p_rot_per_sample=0.2, independent_scale_for_each_axis=False))
    if dummy_2d:
        transforms.append(Convert2DTo3D())
    transforms += [
        GaussianNoiseTransform(p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.25,
                                       ignore_axes=ignore_axes),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]
    if mirror_axes:
        transforms.append(MirrorTransform(tuple(mirror_axes)))
    if use_mask_for_norm is not None and any(use_mask_for_norm):
        transforms.append(MaskOutsideSeg([i for i, m in enumerate(use_mask_for_norm) if m]))
    transforms += _label_tail(deep_supervision_scales, cascade_labels, augment=True, regions=regions,
                              ignore_label=ignore_label)
    return Compose(transforms)


def validation_transforms(deep_supervision_scales: Sequence[Sequence[float]], *,
                          cascade_labels: Sequence[int] | None = None, regions: Sequence | None = None,
                          ignore_label: int | None = None) -> Compose:
    """Validation batches: no augmentation, only -1 → 0, (cascade: the one-hot previous stage),
    ``seg`` → ``target``, (regions: region maps) and DS targets (§5.4)."""
    return Compose(_label_tail(deep_supervision_scales, cascade_labels, augment=False, regions=regions,
                               ignore_label=ignore_label))


def _label_tail(scales: Sequence[Sequence[float]], cascade_labels: Sequence[int] | None, augment: bool,
                regions: Sequence | None = None, ignore_label: int | None = None) -> list:
    tail: list = [RemoveLabelTransform(-1, 0)]
    if cascade_labels is not None:
        tail += cascade_transforms(cascade_labels, augment)
    tail.append(RenameTransform("seg", "target", True))
    if regions is not None:
        tail.append(ConvertSegmentationToRegions(regions, ignore_label))
    return tail + [TargetsForDeepSupervision(scales)]


# ---- background iterators ------------------------------------------------------------------------


class BatchIterator:
    """Infinite iterator of augmented batches; :meth:`close` (or ``with``) stops its worker processes.

    Yields ``{'data': float32 (B, C, *P), 'target': [int16 (B, 1, *P_s) per DS scale], 'keys': [...]}``.
    """

    def __init__(self, augmenter, num_workers: int):
        self._augmenter = augmenter
        self.num_workers = num_workers
        self.closed = False

    def __iter__(self):
        return self

    def start(self) -> None:
        """Start the worker processes now (otherwise the first ``next()`` does). A worker is a fork of
        this process: started before training has grown the heap, it shares the parent's pages instead
        of inheriting gigabytes of freed activations that become its own once the parent reuses them
        (a validation worker forked after the first CT iterations held 1.2 GB)."""
        if self.closed:
            raise RuntimeError("this batch iterator was closed")
        if isinstance(self._augmenter, MultiThreadedAugmenter) and not self._augmenter.was_initialized:
            self._augmenter._start()

    def __next__(self) -> dict:
        if self.closed:
            raise RuntimeError("this batch iterator was closed")
        return next(self._augmenter)

    def close(self) -> None:
        """Shut the worker processes down (drains their queues; idempotent)."""
        if not self.closed and isinstance(self._augmenter, MultiThreadedAugmenter):
            self._augmenter._finish()
        self.closed = True

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - __del__ at interpreter shutdown: multiprocessing may already be gone
            pass


def _seeds(seed: int) -> dict[str, int]:
    """Independent 32-bit seeds of the four random streams derived from one seed."""
    state = np.random.SeedSequence(int(seed)).generate_state(4)
    return dict(zip(("train_loader", "val_loader", "train_aug", "val_aug"), (int(s) for s in state)))


def _augmenter(loader, transform, num_processes: int, num_cached_total: int, seed: int) -> BatchIterator:
    loader.set_workers(num_processes)
    transform = PerBatchRandomState(transform, seed)
    if num_processes == 0:
        return BatchIterator(SingleThreadedAugmenter(loader, transform), 0)
    per_queue = max(1, math.ceil(num_cached_total / num_processes))
    # the workers' np.random seeds do not matter: every batch reseeds (PerBatchRandomState)
    mta = MultiThreadedAugmenter(loader, transform, num_processes, num_cached_per_queue=per_queue,
                                 seeds=list(range(num_processes)), pin_memory=False)
    return BatchIterator(mta, num_processes)


def make_batch_iterators(folder: Path | str, plan: ConfigurationPlan, train_ids: Sequence[str],
                         val_ids: Sequence[str], num_workers: int, seed: int, deep_supervision: bool = True, *,
                         oversample_foreground: float = 0.33, mirroring: bool = True, batch_size: int | None = None,
                         probabilistic_oversampling: bool = False, mirror_axes: Sequence[int] | None = None,
                         previous_stage_folder: Path | str | None = None,
                         foreground_labels: Sequence[int] | None = None,
                         regions: Sequence | None = None, ignore_label: int | None = None,
                         start: bool = True, first_train_batch: int = 0, first_val_batch: int = 0,
                         queued_per_worker: int | None = None) -> tuple[BatchIterator, BatchIterator]:
    """Training and validation batch iterators of one configuration (§5.2–5.4).

    Parameters
    ----------
    folder : the configuration's preprocessed folder (``<preprocessed>/<Dataset>/<data_identifier>``)
    plan : the configuration (patch size, batch size, strides, use_mask_for_norm)
    train_ids, val_ids : case identifiers of the fold
    num_workers : 0 → single-threaded in the calling process; else training uses ``num_workers``
        worker processes (``max(6, n/2)`` batches cached in total) and validation ``max(1, n // 2)``
    queued_per_worker : instead, at most this many finished batches waiting in each worker's queue (CPU
        training, where a step takes far longer than a batch: fewer CT batches held in memory). The
        batches and their order stay the same: the workers' queues are read round-robin.
    seed : seeds the loaders' and the augmentations' generators (each batch from ``(seed, its index)``): the
        batches are the same for any ``num_workers``
    deep_supervision : targets at every DS scale of the plan's strides; otherwise one target
    oversample_foreground : fraction of forced-foreground samples per batch (§5.2)
    mirroring : mirror augmentation on the plan's mirror axes (off for a no-mirroring trainer)
    probabilistic_oversampling : force each sample with probability ``oversample_foreground``
    mirror_axes : mirror along these axes instead of the patch's default ones (``_onlyMirror01``)
    batch_size : overrides the plan's batch size
    previous_stage_folder, foreground_labels : required for a cascade stage (``plan.previous_stage``):
        the previous stage's segmentations (``{CASE}.b2nd``) and the labels of their one-hot channels
    regions, ignore_label : region mode: targets are region maps of these regions (plus the ignore
        channel if ``ignore_label`` is given); None: label maps
    start : start the worker processes of both iterators now, while this process is small (see
        :meth:`BatchIterator.start`); False: on their first ``next()``
    first_train_batch, first_val_batch : index of the first batch of each stream; a training resumed at
        epoch ``e`` passes ``e`` x the iterations per epoch and gets the batches the uninterrupted run got

    Returns
    -------
    (train_iter, val_iter): infinite :class:`BatchIterator`s. Call ``close()`` on both when done
    (the trainer may stop mid-epoch).
    """
    cascade_labels = None
    if plan.previous_stage:
        if previous_stage_folder is None or foreground_labels is None:
            raise ValueError(f"configuration with previous stage '{plan.previous_stage}' needs "
                             "previous_stage_folder and foreground_labels")
        cascade_labels = list(foreground_labels)
    else:
        previous_stage_folder = None
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    patch = tuple(plan.patch_size)
    aug = rotation_and_mirroring(patch)
    bs = int(batch_size or plan.batch_size)
    scales = ds_scales(plan.arch_kwargs["strides"]) if deep_supervision else [[1.0] * len(patch)]
    seeds = _seeds(seed)
    train_loader = NNUNetPatchLoader(folder, train_ids, bs, aug["initial_patch_size"], patch,
                                     oversample=oversample_foreground, seed=seeds["train_loader"],
                                     previous_stage_folder=previous_stage_folder,
                                     probabilistic=probabilistic_oversampling, first_batch=first_train_batch)
    val_loader = NNUNetPatchLoader(folder, val_ids, bs, patch, patch, oversample=oversample_foreground,
                                   seed=seeds["val_loader"], previous_stage_folder=previous_stage_folder,
                                   probabilistic=probabilistic_oversampling, first_batch=first_val_batch)
    axes = tuple(mirror_axes) if mirror_axes is not None else aug["mirror_axes"]
    train_tf = training_transforms(patch, aug["rotation"], aug["dummy_2d"], axes if mirroring else None,
                                   scales, plan.use_mask_for_norm, cascade_labels=cascade_labels, regions=regions,
                                   ignore_label=ignore_label if regions is not None else None)
    val_tf = validation_transforms(scales, cascade_labels=cascade_labels, regions=regions,
                                   ignore_label=ignore_label if regions is not None else None)
    n_val = max(1, num_workers // 2) if num_workers > 0 else 0
    if queued_per_worker is not None and queued_per_worker < 1:
        raise ValueError(f"queued_per_worker must be >= 1, got {queued_per_worker}")
    train_cached = max(6, num_workers // 2) if queued_per_worker is None else queued_per_worker * num_workers
    val_cached = max(3, n_val) if queued_per_worker is None else queued_per_worker * n_val
    train_iter = _augmenter(train_loader, train_tf, num_workers, train_cached, seeds["train_aug"])
    val_iter = _augmenter(val_loader, val_tf, n_val, val_cached, seeds["val_aug"])
    if start:
        train_iter.start()
        val_iter.start()
    log.debug("batch iterators: patch %s, crop %s, batch %d, %d/%d workers, DS scales %s", list(patch),
              list(aug["initial_patch_size"]), bs, num_workers, n_val, scales)
    return train_iter, val_iter
