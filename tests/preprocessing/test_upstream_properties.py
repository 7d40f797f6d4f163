"""Upstream nnU-Net's CASE.pkl: read with a restricted unpickler, converted to pnnunet's properties."""

import os
import pickle
import shutil

import blosc2
import numpy as np
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.preprocessing.storage import list_cases, load_preprocessed_case
from pnnunet.preprocessing.upstream_properties import load_upstream_properties
from tests.conftest import REPO

FOLDER = REPO / "tests" / "data" / "upstream_preprocessed_b2nd" / "nnUNetPlans_3d_fullres"


def test_fixture_pkl_converted():
    p = load_upstream_properties(FOLDER / "hippocampus_001.pkl")
    assert p["spacing"] == [1.0, 1.0, 1.0] and all(type(s) is float for s in p["spacing"])
    assert p["shape_before_cropping"] == [35, 51, 35] and p["bbox_used_for_cropping"] == [[0, 35], [0, 51], [0, 35]]
    assert p["sitk_stuff"]["direction"] == [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]
    locs = p["class_locations"]
    assert list(locs) == [1, 2] and locs[1].shape == (1324, 4) and locs[2].shape == (1624, 4)
    assert locs[1].dtype == np.int64


def test_upstream_folder_loads_lazily_and_locations_match_the_seg(tmp_path):
    assert list_cases(FOLDER) == ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006",
                                  "hippocampus_007"]
    data, seg, props = load_preprocessed_case(FOLDER, "hippocampus_004")
    assert isinstance(data, blosc2.NDArray) and data.shape == (1, 38, 52, 36) and seg.dtype == np.int16
    full = seg[...]
    for label, locs in props["class_locations"].items():
        assert (full[tuple(locs.T)] == label).all() and len(locs) == (full == label).sum()
    d, _, _ = load_preprocessed_case(FOLDER, "hippocampus_004", mmap=False)
    assert type(d) is np.ndarray and d.dtype == np.float32 and np.array_equal(d, data[...])


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pkl_is_refused_and_nothing_runs(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "case.pkl"
    path.write_bytes(pickle.dumps({"spacing": [1.0], "class_locations": {1: _Evil(target)}}))
    with pytest.raises(
            PnnunetError, match=r"case\.pkl: refers to the Python object (posix|os|nt)\.system.*not loaded"):
        load_upstream_properties(path)
    assert not target.exists()
    # a whole upstream-looking case with such a .pkl: training would refuse it the same way
    for suffix in (".b2nd", "_seg.b2nd"):
        shutil.copy(FOLDER / f"hippocampus_001{suffix}", tmp_path / f"case{suffix}")
    with pytest.raises(PnnunetError, match="not loaded"):
        load_preprocessed_case(tmp_path, "case")
    assert not target.exists()


@pytest.mark.parametrize("payload", [
    b"cbuiltins\neval\n(S'1+1'\ntR.",                       # protocol 0 GLOBAL builtins.eval
    b"not a pickle at all",
])
def test_other_bad_pkls_are_clear_errors(tmp_path, payload):
    path = tmp_path / "c.pkl"
    path.write_bytes(payload)
    with pytest.raises(PnnunetError, match=r"c\.pkl: "):
        load_upstream_properties(path)


def test_numpy1_pickles_are_accepted(tmp_path):
    props = {"spacing": [np.float64(2.0)], "shape_before_cropping": (2, 3, 4), "bbox_used_for_cropping": [[0, 2]] * 3,
             "shape_after_cropping_and_before_resampling": (2, 3, 4),
             "class_locations": {1: np.array([[0, 1, 2, 3]]), 2: []}}
    raw = pickle.dumps(props, protocol=3)                     # GLOBAL opcodes name modules as text
    assert b"numpy._core.multiarray" in raw
    path = tmp_path / "old.pkl"
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    p = load_upstream_properties(path)
    assert p["spacing"] == [2.0] and np.array_equal(p["class_locations"][1], [[0, 1, 2, 3]])
    assert p["class_locations"][2].shape == (0, 4)
