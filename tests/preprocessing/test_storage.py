"""Preprocessed case files (npy + JSON + npz class locations, no pickles)."""

import json

import numpy as np

from pnnunet.preprocessing.storage import (case_files, is_case_done, list_cases, load_class_locations,
                                           load_preprocessed_case, save_preprocessed_case)


def _case():
    data = np.random.RandomState(0).rand(2, 3, 4, 5).astype(np.float32)
    seg = np.zeros((1, 3, 4, 5), np.int8)
    seg[0, 1, 1, 1] = 1
    locs = {1: np.array([[0, 1, 1, 1]]), (1, 2): np.array([[0, 1, 1, 1]]), 2: np.zeros((0, 4), np.int64),
            (-1, 0, 1, 2): np.array([[0, 0, 0, 0], [0, 2, 3, 4]])}
    props = {"spacing": [1.0, 2.0, 3.0], "shape_before_cropping": (3, 4, 5),
             "bbox_used_for_cropping": [[np.int64(0), 3], [0, 4], [0, 5]], "class_locations": locs}
    return data, seg, props


def test_round_trip_with_memory_map(tmp_path):
    data, seg, props = _case()
    assert not is_case_done(tmp_path, "c1")
    save_preprocessed_case(tmp_path, "c1", data, seg, props)
    assert is_case_done(tmp_path, "c1")
    d, s, p = load_preprocessed_case(tmp_path, "c1")
    assert isinstance(d, np.memmap) and d.dtype == np.float32 and np.array_equal(d, data)
    assert s.dtype == np.int16 and np.array_equal(s, seg)
    assert p["spacing"] == [1.0, 2.0, 3.0] and p["bbox_used_for_cropping"] == [[0, 3], [0, 4], [0, 5]]
    assert list(p["class_locations"]) == [1, (1, 2), 2, (-1, 0, 1, 2)]
    for k, v in props["class_locations"].items():
        assert np.array_equal(p["class_locations"][k], v)
    d2, _, _ = load_preprocessed_case(tmp_path, "c1", mmap=False)
    assert not isinstance(d2, np.memmap)


def test_properties_json_has_no_locations_and_locations_load_without_pickle(tmp_path):
    data, seg, props = _case()
    save_preprocessed_case(tmp_path, "c1", data, seg, props)
    files = case_files(tmp_path, "c1")
    stored = json.loads(files["properties"].read_text())
    assert "class_locations" not in stored
    with np.load(files["locations"], allow_pickle=False) as z:
        assert z.files == ["1", "(1, 2)", "2", "(-1, 0, 1, 2)"]
    assert set(load_class_locations(tmp_path, "c1")) == {1, (1, 2), 2, (-1, 0, 1, 2)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1.json", "c1.npy", "c1_locations.npz", "c1_seg.npy"]


def test_marker_written_last(tmp_path, monkeypatch):
    data, seg, props = _case()
    save_preprocessed_case(tmp_path, "c1", data, seg, props)
    import pnnunet.preprocessing.storage as storage

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(storage, "save_npy_atomic", boom)
    try:
        save_preprocessed_case(tmp_path, "c1", data, seg, props)
    except OSError:
        pass
    assert not is_case_done(tmp_path, "c1"), "a failed rewrite must not leave the old completion marker"


def test_list_cases_only_finished_ones(tmp_path):
    data, seg, props = _case()
    assert list_cases(tmp_path / "missing") == []
    for c in ("b", "a"):
        save_preprocessed_case(tmp_path, c, data, seg, props)
    (tmp_path / "preprocessing_config.json").write_text("{}")   # folder marker, not a case
    case_files(tmp_path, "a")["properties"].unlink()           # unfinished
    assert list_cases(tmp_path) == ["b"]
