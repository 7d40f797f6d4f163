"""Upstream nnU-Net v2 sliding-window logits and export outputs for tests/inference (run in the upstream venv).

/work/venvs/upstream/bin/python make_inference_fixtures.py --out /work/main/tests/inference/data
"""
import argparse, copy, json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

BASE_PLANS = json.loads(Path("/work/shared/reference/upstream_hippocampus_220/nnUNetPlans.json").read_text())
RS = np.random.RandomState(20261123)


class PosLinear(nn.Module):
    """y = W x + b + bias (bias of patch shape): not flip or translation equivariant."""
    def __init__(self, W, b, bias):
        super().__init__()
        self.W, self.b, self.bias = torch.from_numpy(W), torch.from_numpy(b), torch.from_numpy(bias)

    def forward(self, x):
        y = torch.einsum("kc,nc...->nk...", self.W, x)
        y = y + self.b.reshape(1, -1, *([1] * (x.ndim - 2)))
        return y + self.bias[None]


def plans_with(config_name, config_update, transpose):
    plans = copy.deepcopy(BASE_PLANS)
    cfg = copy.deepcopy(plans["configurations"]["3d_fullres"])
    cfg.update(config_update)
    plans["configurations"] = {config_name: cfg}
    plans["transpose_forward"] = list(transpose)
    plans["transpose_backward"] = [int(i) for i in np.argsort(transpose)]
    return plans


def sliding_window_case(name, shape, patch, n_out, mirror, step, gaussian, arrays, index):
    W = RS.normal(size=(n_out, shape[0])).astype(np.float32)
    b = RS.normal(size=n_out).astype(np.float32)
    bias = RS.normal(size=(n_out, *patch)).astype(np.float32)
    data = RS.normal(size=shape).astype(np.float32)
    dj = {"labels": {"background": 0, **{f"l{i}": i for i in range(1, n_out)}}, "file_ending": ".nii.gz"}
    plans = plans_with("cfg", {"patch_size": list(patch), "spacing": [1.0] * len(patch)}, range(len(patch)))
    pm = PlansManager(plans)
    cm = pm.get_configuration("cfg")
    pred = nnUNetPredictor(tile_step_size=step, use_gaussian=gaussian, use_mirroring=mirror is not None,
                           perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    pred.manual_initialization(PosLinear(W, b, bias), pm, cm, None, dj, "x", mirror)
    out = pred.predict_sliding_window_return_logits(torch.from_numpy(data))
    out = out.float().numpy() if isinstance(out, torch.Tensor) else out.astype(np.float32)
    for k, v in {"data": data, "W": W, "b": b, "bias": bias, "logits": out}.items():
        arrays[f"{name}/{k}"] = v
    index[name] = {"kind": "sliding_window", "patch_size": list(patch), "num_outputs": n_out,
                   "mirror_axes": None if mirror is None else list(mirror), "step_size": step,
                   "use_gaussian": gaussian}


def export_case(name, dataset_json, config_update, transpose, props, n_out, arrays, index, scale=3.0):
    plans = plans_with("cfg", config_update, transpose)
    pm = PlansManager(plans)
    cm = pm.get_configuration("cfg")
    lm = pm.get_label_manager(dataset_json)
    tf = plans["transpose_forward"]
    spacing_t = [props["spacing"][i] for i in tf]
    shape_after = props["shape_after_cropping_and_before_resampling"]
    cfg_sp = cm.spacing
    target = cfg_sp if len(cfg_sp) == len(shape_after) else [spacing_t[0], *cfg_sp]
    pp_shape = [int(round(o / t * s)) for o, t, s in zip(spacing_t, target, shape_after)]
    # smooth random logits: upsampled coarse noise, so argmax regions are blobs with boundaries
    coarse = RS.normal(size=(n_out, *[max(2, s // 3) for s in pp_shape])) * scale
    from skimage.transform import resize
    logits = np.stack([resize(c, pp_shape, order=1, mode="edge", anti_aliasing=False) for c in coarse]).astype(np.float32)
    seg, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
        torch.from_numpy(logits.copy()), pm, cm, lm, copy.deepcopy(props), return_probabilities=True)
    seg_only = convert_predicted_logits_to_segmentation_with_correct_shape(
        torch.from_numpy(logits.copy()), pm, cm, lm, copy.deepcopy(props), return_probabilities=False)
    seg = seg.numpy() if isinstance(seg, torch.Tensor) else seg
    seg_only = seg_only.numpy() if isinstance(seg_only, torch.Tensor) else seg_only
    arrays[f"{name}/logits"] = logits
    arrays[f"{name}/segmentation"] = np.asarray(seg)
    arrays[f"{name}/segmentation_no_probabilities"] = np.asarray(seg_only)
    arrays[f"{name}/probabilities"] = np.asarray(probs, dtype=np.float32)
    index[name] = {"kind": "export", "plans": {"transpose_forward": plans["transpose_forward"],
                                               "transpose_backward": plans["transpose_backward"],
                                               "configurations": {"cfg": plans["configurations"]["cfg"]}},
                   "dataset_json": dataset_json, "properties": props,
                   "segmentation_dtype": str(np.asarray(seg).dtype)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    out = Path(ap.parse_args().out)
    arrays, index = {}, {}
    sliding_window_case("sw_3d_mirror", (2, 13, 17, 11), (8, 10, 6), 3, (0, 1, 2), 0.5, True, arrays, index)
    sliding_window_case("sw_3d_smaller_than_patch", (1, 5, 6, 4), (8, 10, 6), 2, (0, 1, 2), 0.5, True, arrays, index)
    sliding_window_case("sw_2d_on_3d", (1, 3, 23, 19), (12, 8), 2, (0, 1), 0.5, True, arrays, index)
    sliding_window_case("sw_3d_no_mirror_no_gaussian", (1, 12, 14, 9), (6, 8, 4), 2, None, 0.5, False, arrays, index)
    sliding_window_case("sw_3d_step_025", (1, 12, 14, 9), (6, 8, 4), 2, (0, 2), 0.25, True, arrays, index)

    labels3 = {"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}
    export_case("ex_separate_z_transposed", labels3, {"spacing": [3.0, 1.0, 1.0]}, [1, 0, 2],
                {"spacing": [0.8, 4.0, 0.8], "shape_before_cropping": [9, 25, 22],
                 "bbox_used_for_cropping": [[1, 8], [2, 22], [3, 21]],
                 "shape_after_cropping_and_before_resampling": [7, 20, 18]}, 3, arrays, index)
    export_case("ex_regions_plain_resampling", {"labels": {"background": 0, "whole": [1, 2], "core": 2},
                                                "regions_class_order": [1, 2], "file_ending": ".nii.gz"},
                {"spacing": [1.0, 1.0, 1.0]}, [0, 1, 2],
                {"spacing": [1.3, 0.9, 1.1], "shape_before_cropping": [14, 20, 17],
                 "bbox_used_for_cropping": [[2, 12], [0, 20], [1, 16]],
                 "shape_after_cropping_and_before_resampling": [10, 20, 15]}, 2, arrays, index)
    export_case("ex_2d_config", labels3, {"spacing": [1.0, 1.0], "patch_size": [56, 40]}, [0, 2, 1],
                {"spacing": [5.0, 0.7, 0.65], "shape_before_cropping": [4, 22, 23],
                 "bbox_used_for_cropping": [[0, 4], [1, 18], [2, 22]],
                 "shape_after_cropping_and_before_resampling": [4, 17, 20]}, 3, arrays, index)
    export_case("ex_no_resampling_ignore", {"labels": {"background": 0, "a": 1, "b": 2, "c": 3, "ignore": 4},
                                            "file_ending": ".nii.gz"},
                {"spacing": [1.0, 1.0, 1.0]}, [2, 0, 1],
                {"spacing": [1.0, 1.0, 1.0], "shape_before_cropping": [12, 13, 14],
                 "bbox_used_for_cropping": [[1, 11], [0, 13], [3, 12]],
                 "shape_after_cropping_and_before_resampling": [10, 13, 9]}, 4, arrays, index)

    export_case("ex_separate_z_from_config_spacing", labels3, {"spacing": [3.5, 0.9, 1.1]}, [0, 1, 2],
                {"spacing": [1.2, 1.0, 1.0], "shape_before_cropping": [26, 12, 13],
                 "bbox_used_for_cropping": [[0, 26], [1, 11], [0, 13]],
                 "shape_after_cropping_and_before_resampling": [26, 10, 13]}, 3, arrays, index)
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    for patch in [(30, 16), (46, 24), (12, 16, 20)]:
        key = "gaussian_" + "x".join(map(str, patch))
        arrays[key] = compute_gaussian(patch, 1. / 8, 10, device=torch.device("cpu")).numpy()
        index[key] = {"kind": "gaussian", "patch_size": list(patch)}

    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "upstream_inference.npz", **arrays)
    import scipy, skimage
    made_with = {"nnunetv2": "2.8.1", "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
                 "scikit-image": skimage.__version__}
    (out / "upstream_inference.json").write_text(json.dumps({"made_with": made_with, "cases": index}, indent=1))


if __name__ == "__main__":
    main()
