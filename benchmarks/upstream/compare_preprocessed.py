"""Compare every preprocessed case of upstream nnU-Net v2 (.b2nd + .pkl) with pnnunet's (.b2nd or .npy + .json).

Run with the UPSTREAM venv's python (needs blosc2); reads pnnunet's files with blosc2/numpy/json only
(a folder holding ``cases_shared_with.json`` is read from the folder it names):
    python compare_preprocessed.py UPSTREAM_PREPROCESSED_ROOT PNNUNET_PREPROCESSED_ROOT
Prints one JSON line per configuration summary at the end (max abs data diff, seg mismatches,
class-location mismatches, bbox mismatches, cases compared).
"""

import json
import pickle
import sys
from pathlib import Path

import blosc2
import numpy as np


def _array(folder: Path, name: str) -> np.ndarray:
    b2nd = folder / f"{name}.b2nd"
    return blosc2.open(str(b2nd), mode="r")[:] if b2nd.is_file() else np.load(folder / f"{name}.npy")


def _case_folder(folder: Path) -> Path:
    pointer = folder / "cases_shared_with.json"
    return folder.parent / json.loads(pointer.read_text())["data_identifier"] if pointer.is_file() else folder


def main(up_root: Path, pn_root: Path) -> None:
    up_ds = next(p for p in up_root.iterdir() if p.is_dir())
    pn_ds = next(p for p in pn_root.iterdir() if p.is_dir())
    result = {}
    for up_cfg in sorted(up_ds.glob("nnUNetPlans_*")):
        cfg = up_cfg.name.split("_", 1)[1]
        pn_cfg = pn_ds / f"pnnunetPlans_{cfg}"
        if not pn_cfg.is_dir():
            result[cfg] = "missing in pnnunet"
            continue
        pn_cfg = _case_folder(pn_cfg)
        stats = {"cases": 0, "max_abs_data_diff": 0.0, "seg_mismatch_cases": 0, "shape_mismatch_cases": 0,
                 "bbox_mismatch_cases": 0, "class_location_mismatch_cases": 0}
        for pkl in sorted(up_cfg.glob("*.pkl")):
            case = pkl.stem
            with open(pkl, "rb") as f:
                up_props = pickle.load(f)
            up_data = blosc2.open(str(up_cfg / f"{case}.b2nd"), mode="r")[:]
            up_seg = blosc2.open(str(up_cfg / f"{case}_seg.b2nd"), mode="r")[:]
            pn_data = _array(pn_cfg, case)
            pn_seg = _array(pn_cfg, f"{case}_seg")
            pn_props = json.loads((pn_cfg / f"{case}.json").read_text())
            stats["cases"] += 1
            if up_data.shape != pn_data.shape or up_seg.shape != pn_seg.shape:
                stats["shape_mismatch_cases"] += 1
                continue
            stats["max_abs_data_diff"] = max(stats["max_abs_data_diff"], float(np.abs(up_data - pn_data).max()))
            stats["seg_mismatch_cases"] += int(not np.array_equal(up_seg, pn_seg))
            up_bbox = [list(map(int, b)) for b in up_props["bbox_used_for_cropping"]]
            stats["bbox_mismatch_cases"] += int(up_bbox != pn_props["bbox_used_for_cropping"])
            locs = np.load(pn_cfg / f"{case}_locations.npz")
            same = True
            for k, v in up_props["class_locations"].items():
                ours = locs[str(k)] if str(k) in locs.files else np.zeros((0, 4))
                if not np.array_equal(np.asarray(v).reshape(-1, 4), ours.reshape(-1, 4)):
                    same = False
            stats["class_location_mismatch_cases"] += int(not same)
        result[cfg] = stats
    print(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
