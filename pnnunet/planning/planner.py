"""The experiment planner: fingerprint + dataset.json → plans (reference §3, Appendix A.1).

Everything here is pure numpy on plain dicts, so that the same inputs give the same plan as
upstream nnU-Net v2's ``ExperimentPlanner``, to the integer. Python's ``round`` (half to even) is
used wherever upstream uses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pnnunet.defaults import DEFAULT_PLANS
from pnnunet.planning.topology import conv_feature_map_size, get_pool_and_conv_props, resenc_conv_feature_map_size
from pnnunet.preprocessing.normalization import scheme_for_channel_name
from pnnunet.preprocessing.resampling import compute_new_shape

log = logging.getLogger(__name__)

ANISO_THRESHOLD = 3
LOWRES_CREATION_THRESHOLD = 0.25
LOWRES_SPACING_STEP = 1.03


@dataclass(frozen=True)
class PlannerSettings:
    """Constants of the default planner (reference §3 table)."""

    plans_name: str = DEFAULT_PLANS
    gpu_memory_target_gb: float = 8.0
    reference_val_3d: float = 560_000_000
    reference_val_2d: float = 85_000_000
    reference_val_gb: float = 8.0
    reference_bs_3d: int = 2
    reference_bs_2d: int = 12
    min_batch_size: int = 2
    max_dataset_covered: float = 0.05
    base_features: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    n_conv_per_stage: int = 2
    n_conv_per_stage_decoder: int = 2
    overwrite_target_spacing: tuple[float, ...] | None = None
    # what upstream's planner subclasses change (ResEnc presets, models_and_scale §3)
    network: str = "PlainConvUNet"  # or "ResidualEncoderUNet"
    n_blocks_per_stage: tuple[int, ...] = ()  # ResidualEncoderUNet: residual blocks of encoder stage s
    # the default planner shrinks the patch while estimate / ref_bs · 2 > reference (what a batch of 2 needs);
    # the ResEnc planners while estimate > reference
    shrink_for_batch_of_two: bool = True
    # plans whose 2d / 3d_fullres data this planner reuses (ResEnc: the default planner's), None = its own
    shared_data_plans: str | None = None
    planner_name: str = "ExperimentPlanner"  # ``experiment_planner_used`` in the plans


# Named planner presets (``-pl``). "tiny" is a separate plans file for demos and CI: 8 base
# features (max 32) and a small memory target, so a few CPU iterations take seconds.
def resenc_settings(size: str, vram_gb: float, reference_val_3d: float, reference_val_2d: float) -> PlannerSettings:
    """Upstream's ``nnUNetPlannerResEnc{M,L,XL}`` (models_and_scale §3): a ResidualEncoderUNet with
    (1, 3, 4, 6, 6, 6, ...) blocks per stage and one decoder conv per stage, the reference values given for
    ``vram_gb`` (the GPU memory target), no 5 % dataset cap; 2d and 3d_fullres reuse the default plans' data."""
    return PlannerSettings(plans_name=f"nnUNetResEncUNet{size}Plans", planner_name=f"nnUNetPlannerResEnc{size}",
                           network="ResidualEncoderUNet", n_blocks_per_stage=(1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6),
                           n_conv_per_stage_decoder=1, gpu_memory_target_gb=vram_gb, reference_val_gb=vram_gb,
                           reference_val_3d=reference_val_3d, reference_val_2d=reference_val_2d,
                           max_dataset_covered=1.0, shrink_for_batch_of_two=False, shared_data_plans=DEFAULT_PLANS)


PLANNER_PRESETS: dict[str, PlannerSettings] = {
    "default": PlannerSettings(),
    "tiny": PlannerSettings(plans_name="pnnunetTinyPlans", base_features=8, max_features_3d=32, max_features_2d=32,
                            gpu_memory_target_gb=0.02),
    "nnUNetPlannerResEncM": resenc_settings("M", 8, 680_000_000, 135_000_000),
    "nnUNetPlannerResEncL": resenc_settings("L", 24, 2_100_000_000, 380_000_000),
    "nnUNetPlannerResEncXL": resenc_settings("XL", 40, 3_600_000_000, 560_000_000),
}
PLANNER_ALIASES = {"ExperimentPlanner": "default", "nnUNetPlanner": "default",
                   "ResEncM": "nnUNetPlannerResEncM", "ResEncL": "nnUNetPlannerResEncL",
                   "ResEncXL": "nnUNetPlannerResEncXL"}


# Class strings written into plans. DEVIATION(DESIGN contract): layer class names name Paddle's
# layers; everything the planner decides keeps upstream's values.
NETWORK_CLASS = {"PlainConvUNet": "pnnunet.runtime.network.PlainConvUNet",
                 "ResidualEncoderUNet": "pnnunet.runtime.resenc_network.ResidualEncoderUNet"}
CONV_OP = {2: "paddle.nn.Conv2D", 3: "paddle.nn.Conv3D"}
NORM_OP = {2: "paddle.nn.InstanceNorm2D", 3: "paddle.nn.InstanceNorm3D"}
NONLIN = "paddle.nn.LeakyReLU"
# Normalization schemes that keep the outside of the mask at 0 when use_mask_for_norm (§3.4).
MASKABLE_SCHEMES = {"ZScoreNormalization"}
RESAMPLING_FN = "resample_data_or_seg_to_shape"


def fullres_target_spacing(spacings: np.ndarray, shapes: np.ndarray,
                           aniso_threshold: float = ANISO_THRESHOLD) -> np.ndarray:
    """Median spacing with the anisotropic-axis correction (reference §3.1).

    spacings, shapes : (n_cases, 3) in reader axis order, shapes after cropping.
    Returns (3,) float64.
    """
    spacings = np.vstack(spacings).astype(np.float64)
    target = np.percentile(spacings, 50, axis=0)
    target_size = np.percentile(np.vstack(shapes), 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_spacings = [target[i] for i in others]
    other_sizes = [target_size[i] for i in others]
    aniso_spacing = target[worst] > aniso_threshold * max(other_spacings)
    aniso_voxels = target_size[worst] * aniso_threshold < min(other_sizes)
    if aniso_spacing and aniso_voxels:
        t = np.percentile(spacings[:, worst], 10)
        if t < max(other_spacings):
            t = max(max(other_spacings), t) + 1e-5
        target[worst] = t
    return target


def transpose_from_spacing(target_spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    """Put the coarsest axis first, the others in ascending order (reference §3.2)."""
    m = int(np.argmax(target_spacing))
    forward = [m] + [i for i in range(len(target_spacing)) if i != m]
    backward = [forward.index(i) for i in range(len(target_spacing))]
    return forward, backward


def normalization_for_channels(channel_names: dict, median_relative_size_after_cropping: float
                               ) -> tuple[list[str], list[bool]]:
    """Scheme per channel (dataset.json order) and ``use_mask_for_norm`` (reference §3.4)."""
    schemes = [scheme_for_channel_name(n) for n in channel_names.values()]
    if median_relative_size_after_cropping < 3 / 4.0:
        use_mask = [s in MASKABLE_SCHEMES for s in schemes]
    else:
        use_mask = [False] * len(schemes)
    return schemes, use_mask


def _encoder_depth(n: int, settings: PlannerSettings) -> dict:
    """``n_conv_per_stage`` (PlainConvUNet) or ``n_blocks_per_stage`` (ResidualEncoderUNet) of ``n`` stages."""
    if settings.network == "ResidualEncoderUNet":
        if n > len(settings.n_blocks_per_stage):
            raise ValueError(f"{n} stages but n_blocks_per_stage has only {len(settings.n_blocks_per_stage)} entries")
        return {"n_blocks_per_stage": list(settings.n_blocks_per_stage[:n])}
    return {"n_conv_per_stage": [settings.n_conv_per_stage] * n}


def _arch_kwargs(topology, dim: int, settings: PlannerSettings) -> dict:
    n = topology.n_stages
    max_f = settings.max_features_2d if dim == 2 else settings.max_features_3d
    return {
        "n_stages": n,
        "features_per_stage": [min(max_f, settings.base_features * 2 ** i) for i in range(n)],
        "conv_op": CONV_OP[dim],
        "kernel_sizes": [list(k) for k in topology.kernel_sizes],
        "strides": [list(s) for s in topology.strides],
        **_encoder_depth(n, settings),
        "n_conv_per_stage_decoder": [settings.n_conv_per_stage_decoder] * (n - 1),
        "conv_bias": True,
        "norm_op": NORM_OP[dim],
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": NONLIN,
        "nonlin_kwargs": {"negative_slope": 0.01},
    }


def _estimate(topology, arch: dict, num_classes: int) -> int:
    if "n_blocks_per_stage" in arch:
        return resenc_conv_feature_map_size(topology.patch_size, arch["features_per_stage"], topology.strides,
                                            arch["n_blocks_per_stage"], arch["n_conv_per_stage_decoder"], num_classes)
    return conv_feature_map_size(topology.patch_size, arch["features_per_stage"], topology.strides,
                                 arch["n_conv_per_stage"], arch["n_conv_per_stage_decoder"], num_classes)


def plan_configuration(spacing: Sequence[float], median_shape: Sequence[float], data_identifier: str,
                       approx_n_voxels_dataset: float, num_classes: int, normalization: tuple[list, list],
                       settings: PlannerSettings = PlannerSettings()) -> dict:
    """Patch size, topology and batch size of one configuration (reference §3.6).

    spacing, median_shape : (dim,) transposed; ``median_shape`` may be float (median of shapes).
    num_classes : ``len(dataset.json labels)`` (background and ignore included; Appendix G.3).
    """
    dim = len(spacing)
    if any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be > 0, got {list(spacing)}")
    median_as_given = [m.item() if isinstance(m, np.generic) else m for m in list(median_shape)[:dim]]
    median_shape = np.asarray(median_shape, dtype=np.float64)[:dim]
    inv = 1 / np.asarray(spacing, dtype=np.float64)
    if dim == 3:
        init = [round(i) for i in inv * (256 ** 3 / np.prod(inv)) ** (1 / 3)]
    else:
        init = [round(i) for i in inv * (2048 ** 2 / np.prod(inv)) ** (1 / 2)]
    init = np.minimum(init, median_shape)

    topo = get_pool_and_conv_props(spacing, init)
    arch = _arch_kwargs(topo, dim, settings)
    cache: dict[tuple, int] = {}

    def estimate(t, a) -> int:
        key = (t.patch_size, t.strides)
        if key not in cache:
            cache[key] = _estimate(t, a, num_classes)
        return cache[key]

    reference = (settings.reference_val_2d if dim == 2 else settings.reference_val_3d) * (
        settings.gpu_memory_target_gb / settings.reference_val_gb)
    ref_bs = settings.reference_bs_2d if dim == 2 else settings.reference_bs_3d
    est = estimate(topo, arch)
    while (est / ref_bs * 2 if settings.shrink_for_batch_of_two else est) > reference:
        patch = list(topo.patch_size)
        ratios = [p / m for p, m in zip(patch, median_shape)]
        axis = int(np.argsort(ratios)[-1])  # ties → highest axis index, as upstream
        tmp = list(patch)
        tmp[axis] -= topo.divisible_by[axis]
        divisible_after = get_pool_and_conv_props(spacing, tmp).divisible_by
        patch[axis] -= divisible_after[axis]
        topo = get_pool_and_conv_props(spacing, patch)
        arch = _arch_kwargs(topo, dim, settings)
        est = estimate(topo, arch)

    batch_size = round(reference / est * ref_bs)
    bs_cap = round(approx_n_voxels_dataset * settings.max_dataset_covered / np.prod(topo.patch_size, dtype=np.float64))
    batch_size = max(min(batch_size, bs_cap), settings.min_batch_size)

    schemes, use_mask = normalization
    data_kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    seg_kwargs = {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}
    prob_kwargs = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    return {
        "data_identifier": data_identifier,
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": int(batch_size),
        "patch_size": list(topo.patch_size),
        "median_image_size_in_voxels": median_as_given,  # floats (median) or ints (lowres), as upstream
        "spacing": [float(s) for s in spacing],
        "normalization_schemes": list(schemes),
        "use_mask_for_norm": list(use_mask),
        "resampling_fn_data": RESAMPLING_FN,
        "resampling_fn_seg": RESAMPLING_FN,
        "resampling_fn_data_kwargs": data_kwargs,
        "resampling_fn_seg_kwargs": seg_kwargs,
        "resampling_fn_probabilities": RESAMPLING_FN,
        "resampling_fn_probabilities_kwargs": prob_kwargs,
        "architecture": {"network_class_name": NETWORK_CLASS[settings.network], "arch_kwargs": arch,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    }


def plan_experiment(fingerprint: dict, dataset_json: dict, dataset_name: str, image_reader_writer: str,
                    settings: PlannerSettings = PlannerSettings()) -> dict:
    """Plans for 2d, 3d_fullres and (when useful) 3d_lowres + 3d_cascade_fullres (Appendix A.1).

    Parameters
    ----------
    fingerprint : dataset_fingerprint.json content (spacings and shapes in reader order).
    dataset_json : the dataset's dataset.json (``channel_names``, ``labels``, ``numTraining``).
    Returns the plans dict with nnU-Net v2's keys and ordering (2d, 3d_lowres, 3d_fullres, cascade).
    """
    spacings = np.vstack(fingerprint["spacings"]).astype(np.float64)
    shapes = np.vstack(fingerprint["shapes_after_crop"])
    if settings.overwrite_target_spacing is not None:
        # Used everywhere the fullres target spacing is used, incl. transpose and 2d (§3.1.6, App. G.15).
        target = np.array(settings.overwrite_target_spacing, dtype=np.float64)
    else:
        target = fullres_target_spacing(spacings, shapes)
    tf, tb = transpose_from_spacing(target)
    target_t = target[tf]

    new_shapes = [compute_new_shape(sh, sp, target) for sp, sh in zip(spacings, shapes)]  # §3.3
    median_new = np.median(np.vstack(new_shapes), 0)
    median_t = median_new[tf]
    n_training = dataset_json["numTraining"]
    approx_n_vox = float(np.prod(median_t, dtype=np.float64) * n_training)
    num_classes = len(dataset_json["labels"])
    channel_names = dataset_json.get("channel_names") or dataset_json.get("modality")
    normalization = normalization_for_channels(channel_names, fingerprint["median_relative_size_after_cropping"])

    def ident(c: str) -> str:
        if settings.shared_data_plans and c in ("2d", "3d_fullres"):
            return f"{settings.shared_data_plans}_{c}"  # same preprocessing as those plans: reuse their data
        return f"{settings.plans_name}_{c}"

    full = low = None
    if median_t[0] != 1:
        full = plan_configuration(target_t, median_t, ident("3d_fullres"), approx_n_vox, num_classes,
                                  normalization, settings)
        low = _lowres_search(full, target_t, median_t, n_training, num_classes, normalization, settings, ident)
        full["batch_dice"] = low is not None
        if low is not None:
            low["batch_dice"] = False
    two_d = plan_configuration(target_t[1:], median_t[1:], ident("2d"), approx_n_vox, num_classes,
                               normalization, settings)
    two_d["batch_dice"] = True

    configurations: dict[str, dict] = {"2d": two_d}
    if low is not None:
        if full is not None:
            low["next_stage"] = "3d_cascade_fullres"
        configurations["3d_lowres"] = low
    if full is not None:
        configurations["3d_fullres"] = full
        if low is not None:
            configurations["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}

    median_spacing = np.median(spacings, 0)[tf]
    median_shape = np.median(shapes, 0)[tf]
    return {
        "dataset_name": dataset_name,
        "plans_name": settings.plans_name,
        "original_median_spacing_after_transp": [float(i) for i in median_spacing],
        "original_median_shape_after_transp": [int(round(i)) for i in median_shape],
        "image_reader_writer": image_reader_writer,
        "transpose_forward": [int(i) for i in tf],
        "transpose_backward": [int(i) for i in tb],
        "configurations": configurations,
        "experiment_planner_used": settings.planner_name,
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": fingerprint["foreground_intensity_properties_per_channel"],
    }


def _lowres_search(full: dict, target_t: np.ndarray, median_t: np.ndarray, n_training: int, num_classes: int,
                   normalization, settings: PlannerSettings, ident) -> dict | None:
    """Coarsen the spacing by 3 % steps until the patch covers ≥ 25 % of the median image (§3.7)."""
    full_spacing = np.asarray(full["spacing"], dtype=np.float64)
    median_vox = np.prod(median_t, dtype=np.float64)
    patch_vox = np.prod(full["patch_size"], dtype=np.float64)
    low_spacing = full_spacing.copy()
    low = None
    while patch_vox / median_vox < LOWRES_CREATION_THRESHOLD:
        smax = max(low_spacing)
        if np.any((smax / low_spacing) > 2):
            low_spacing[(smax / low_spacing) > 2] *= LOWRES_SPACING_STEP
        else:
            low_spacing *= LOWRES_SPACING_STEP
        median_vox = np.prod(full_spacing / low_spacing * median_t, dtype=np.float64)
        median_low = [round(i) for i in full_spacing / low_spacing * median_t]
        low = plan_configuration(low_spacing, median_low, ident("3d_lowres"), float(median_vox * n_training),
                                 num_classes, normalization, settings)
        patch_vox = np.prod(low["patch_size"], dtype=np.int64)
        log.debug("3d_lowres search: spacing %s patch %s", low_spacing, low["patch_size"])
    full_vox = np.prod(median_t, dtype=np.float64)
    if low is None:
        log.info("no 3d_lowres: the 3d_fullres patch already covers %.0f %% of the median image (a cascade is planned "
                 "below %.0f %%)", 100 * patch_vox / full_vox, 100 * LOWRES_CREATION_THRESHOLD)
        return None
    if full_vox / median_vox < 2:
        # upstream's rule: a lowres stage only pays off when its images are at most half as large as fullres's
        log.info("no 3d_lowres: its median image (%d voxels) would be more than half as large as 3d_fullres's "
                 "(%d voxels), too close to full resolution for a cascade", round(median_vox), round(full_vox))
        return None
    return low
