"""preprocess_case against upstream nnU-Net v2's DefaultPreprocessor (fixtures: tests/data/upstream_preprocessing).

Seg, bbox, shapes and class locations must be identical; data is compared bit for bit too
(measured max abs difference 0 on all fixtures), with a float32 tolerance as the failure bound
only on platforms whose libm differs.
"""

import json

import numpy as np
import pytest

from pnnunet.imageio import SimpleITKIO
from pnnunet.preprocessing.preprocessor import preprocess_case, preprocess_case_files
from tests.conftest import REPO, UPSTREAM_HIPPO, require

FIXTURES = REPO / "tests" / "data" / "upstream_preprocessing"
INDEX = json.loads((FIXTURES / "fixtures.json").read_text())["fixtures"]
DATA_ATOL = 1e-5  # bound for other platforms; here the difference is exactly 0


def _run_ours(entry: dict, z):
    if entry["source"] == "hippocampus":
        hippocampus = FIXTURES / "hippocampus"  # the three real cases, copied from ../shared/data
        plans = json.loads(require(UPSTREAM_HIPPO / "nnUNetPlans.json").read_text())
        case = entry["case"]
        return preprocess_case_files([hippocampus / "imagesTr" / f"{case}.nii.gz"],
                                     hippocampus / "labelsTr" / f"{case}.nii.gz", plans, entry["configuration"],
                                     entry["dataset_json"], SimpleITKIO())
    seg = z["input_seg"] if entry["with_seg"] else None
    return preprocess_case(z["input_data"], seg, {"spacing": z["input_spacing"].tolist()}, entry["plans"],
                           entry["configuration"], entry["dataset_json"])


@pytest.mark.upstream
@pytest.mark.parametrize("name", sorted(INDEX))
def test_matches_upstream_default_preprocessor(name):
    entry = INDEX[name]
    with np.load(FIXTURES / entry["file"], allow_pickle=False) as z:
        data, seg, props = _run_ours(entry, z)
        assert data.dtype == np.float32 and data.shape == z["data"].shape
        max_abs = float(np.max(np.abs(data - z["data"])))
        assert max_abs <= DATA_ATOL, f"max abs difference {max_abs}"
        assert str(seg.dtype) == entry["seg_dtype"]
        assert np.array_equal(seg, z["seg"])
        assert props["bbox_used_for_cropping"] == z["bbox"].tolist()
        assert props["shape_before_cropping"] == z["shape_before_cropping"].tolist()
        assert props["shape_after_cropping_and_before_resampling"] == z["shape_after_cropping"].tolist()
        assert ("class_locations" in props) == entry["has_class_locations"]
        locations = props.get("class_locations", {})
        assert [str(k) for k in locations] == entry["class_location_keys"]
        for key, rows in locations.items():
            assert np.array_equal(rows, z[f"loc {key}"]), f"class locations of {key}"


@pytest.mark.upstream
def test_data_is_bit_exact_on_synthetic_fixtures():
    """The float32 pipeline (incl. layout-dependent reductions, §4.4) reproduces upstream's bits."""
    for name, entry in INDEX.items():
        if entry["source"] != "synthetic":
            continue
        with np.load(FIXTURES / entry["file"], allow_pickle=False) as z:
            data, _, _ = _run_ours(entry, z)
            assert np.array_equal(data, z["data"]), name
