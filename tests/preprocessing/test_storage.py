"""Preprocessed case files: Blosc2 .b2nd (default) or .npy arrays + JSON + npz class locations, no pickles."""

import json
import tracemalloc

import blosc2
import numpy as np
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.preprocessing import storage
from pnnunet.preprocessing.chunking import blosc2_blocks_and_chunks
from pnnunet.preprocessing.storage import (SHARED_POINTER, case_folder, case_files, is_case_done, list_cases,
                                           load_class_locations, load_preprocessed_case, preprocessed_case_shape,
                                           save_preprocessed_case, write_shared_pointer)


def _case():
    data = np.random.RandomState(0).rand(2, 3, 4, 5).astype(np.float32)
    seg = np.zeros((1, 3, 4, 5), np.int8)
    seg[0, 1, 1, 1] = 1
    locs = {1: np.array([[0, 1, 1, 1]]), (1, 2): np.array([[0, 1, 1, 1]]), 2: np.zeros((0, 4), np.int64),
            (-1, 0, 1, 2): np.array([[0, 0, 0, 0], [0, 2, 3, 4]])}
    props = {"spacing": [1.0, 2.0, 3.0], "shape_before_cropping": (3, 4, 5),
             "bbox_used_for_cropping": [[np.int64(0), 3], [0, 4], [0, 5]], "class_locations": locs}
    return data, seg, props


@pytest.mark.parametrize("fmt, lazy_type", [("b2nd", blosc2.NDArray), ("npy", np.memmap)])
def test_round_trip_lazy_and_in_memory(tmp_path, fmt, lazy_type):
    data, seg, props = _case()
    assert not is_case_done(tmp_path, "c1")
    save_preprocessed_case(tmp_path, "c1", data, seg, props, patch_size=(2, 2, 2), storage=fmt)
    assert is_case_done(tmp_path, "c1")
    d, s, p = load_preprocessed_case(tmp_path, "c1")
    assert isinstance(d, lazy_type) and d.dtype == np.float32 and np.array_equal(d[...], data)
    assert s.dtype == np.int16 and np.array_equal(s[...], seg)
    assert np.array_equal(d[:, 1:3, 0:2, 4:5], data[:, 1:3, 0:2, 4:5])
    assert p["spacing"] == [1.0, 2.0, 3.0] and p["bbox_used_for_cropping"] == [[0, 3], [0, 4], [0, 5]]
    assert list(p["class_locations"]) == [1, (1, 2), 2, (-1, 0, 1, 2)]
    for k, v in props["class_locations"].items():
        assert np.array_equal(p["class_locations"][k], v)
    d2, s2, _ = load_preprocessed_case(tmp_path, "c1", mmap=False)
    assert type(d2) is np.ndarray and type(s2) is np.ndarray and np.array_equal(d2, data)
    assert preprocessed_case_shape(tmp_path, "c1") == (2, 3, 4, 5)
    assert preprocessed_case_shape(tmp_path, "other") is None


def test_b2nd_is_chunked_for_the_patch_and_lossless(tmp_path):
    rs = np.random.RandomState(1)
    data = np.round(rs.normal(size=(1, 40, 70, 33)), 2).astype(np.float32)
    seg = rs.randint(-1, 3, (1, 40, 70, 33)).astype(np.int16)
    save_preprocessed_case(tmp_path, "c", data, seg, {"spacing": [1, 1, 1]}, patch_size=(16, 24, 16))
    for name, arr in (("c.b2nd", data), ("c_seg.b2nd", seg)):
        stored = blosc2.open(str(tmp_path / name), mode="r")
        blocks, chunks = blosc2_blocks_and_chunks(arr.shape, (16, 24, 16), arr.itemsize)
        assert (stored.blocks, stored.chunks) == (blocks, chunks) and stored.schunk.nchunks > 1
        cp = stored.schunk.cparams
        assert (cp.codec, cp.clevel) == (blosc2.Codec.LZ4HC, 5)
        assert np.array_equal(stored[...], arr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.b2nd", "c.json", "c_seg.b2nd"]


def test_patch_read_does_not_decompress_the_whole_case(tmp_path):
    data = np.random.RandomState(2).rand(1, 64, 128, 128).astype(np.float32)  # 4 MiB
    save_preprocessed_case(tmp_path, "big", data, data.astype(np.int16), {}, patch_size=(16, 16, 16))
    d, s, _ = load_preprocessed_case(tmp_path, "big")
    tracemalloc.start()
    patch = d[:, 10:26, 50:66, 0:16]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.array_equal(patch, data[:, 10:26, 50:66, 0:16])
    assert peak < 1 << 20, f"a 16 KiB patch read allocated {peak} bytes"


def test_old_npy_case_is_read_and_replaced_by_b2nd(tmp_path):
    data, seg, props = _case()
    save_preprocessed_case(tmp_path, "c1", data, seg, props, storage="npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1.json", "c1.npy", "c1_locations.npz", "c1_seg.npy"]
    assert list_cases(tmp_path) == ["c1"] and np.array_equal(load_preprocessed_case(tmp_path, "c1")[0], data)
    save_preprocessed_case(tmp_path, "c1", data, seg, props)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1.b2nd", "c1.json", "c1_locations.npz", "c1_seg.b2nd"]
    with pytest.raises(PnnunetError, match="unknown storage format"):
        save_preprocessed_case(tmp_path, "c1", data, seg, props, storage="zarr")


def test_properties_json_has_no_locations_and_locations_load_without_pickle(tmp_path):
    data, seg, props = _case()
    save_preprocessed_case(tmp_path, "c1", data, seg, props)
    files = case_files(tmp_path, "c1")
    stored = json.loads(files["properties"].read_text())
    assert "class_locations" not in stored
    with np.load(files["locations"], allow_pickle=False) as z:
        assert z.files == ["1", "(1, 2)", "2", "(-1, 0, 1, 2)"]
    assert set(load_class_locations(tmp_path, "c1")) == {1, (1, 2), 2, (-1, 0, 1, 2)}


def test_marker_written_last(tmp_path, monkeypatch):
    data, seg, props = _case()
    save_preprocessed_case(tmp_path, "c1", data, seg, props)

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(storage, "save_array", boom)
    with pytest.raises(OSError):
        save_preprocessed_case(tmp_path, "c1", data, seg, props)
    assert not is_case_done(tmp_path, "c1"), "a failed rewrite must not leave the old completion marker"


def test_killed_b2nd_write_leaves_no_final_file(tmp_path, monkeypatch):
    real = blosc2.asarray

    def killed(array, urlpath=None, **kw):
        if urlpath is None:  # the in-memory trial compressions of the filter choice
            return real(array, **kw)
        with open(urlpath, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(storage.blosc2, "asarray", killed)
    with pytest.raises(KeyboardInterrupt):
        storage.save_b2nd_atomic(tmp_path / "x.b2nd", np.zeros((1, 2, 2, 2), np.float32), None)
    assert list(tmp_path.iterdir()) == []


def test_damaged_b2nd_is_a_clear_error(tmp_path):
    data, seg, props = _case()
    save_preprocessed_case(tmp_path, "c1", data, seg, props)
    (tmp_path / "c1.b2nd").write_bytes(b"not blosc2 at all")
    with pytest.raises(PnnunetError, match=r"c1\.b2nd: cannot be read.*\n  fix: rerun pnnunet_plan_and_preprocess"):
        load_preprocessed_case(tmp_path, "c1")
    with pytest.raises(PnnunetError, match="case c9 is not"):
        load_preprocessed_case(tmp_path, "c9")


def test_list_cases_only_finished_ones(tmp_path):
    data, seg, props = _case()
    assert list_cases(tmp_path / "missing") == []
    for c in ("b", "a"):
        save_preprocessed_case(tmp_path, c, data, seg, props)
    (tmp_path / "preprocessing_config.json").write_text("{}")   # folder marker, not a case
    case_files(tmp_path, "a")["properties"].unlink()           # unfinished
    assert list_cases(tmp_path) == ["b"]


def test_shared_pointer_is_followed_and_a_broken_owner_is_an_error(tmp_path):
    data, seg, props = _case()
    owner, other = tmp_path / "P_3d_fullres", tmp_path / "P_2d"
    marker = {"format": 1, "configuration": {"data_identifier": "P_3d_fullres", "spacing": [1, 1, 1]}}
    save_preprocessed_case(owner, "c1", data, seg, props)
    (owner / "preprocessing_config.json").write_text(json.dumps(marker))
    other.mkdir()
    write_shared_pointer(other, "P_3d_fullres", storage.marker_without_identifier(marker))
    assert (other / SHARED_POINTER).is_file() and case_folder(other) == owner
    assert list_cases(other) == ["c1"] and np.array_equal(load_preprocessed_case(other, "c1")[0][...], data)
    assert preprocessed_case_shape(other, "c1") == (2, 3, 4, 5)
    marker["configuration"]["spacing"] = [2, 2, 2]                 # owner re-preprocessed differently
    (owner / "preprocessing_config.json").write_text(json.dumps(marker))
    with pytest.raises(PnnunetError, match="shared with .*P_3d_fullres, which was since preprocessed with other"):
        list_cases(other)
    import shutil
    shutil.rmtree(owner)
    with pytest.raises(PnnunetError, match="P_3d_fullres, which no longer exists\n  fix: rerun"):
        load_preprocessed_case(other, "c1")
    (other / SHARED_POINTER).write_text("{")
    with pytest.raises(PnnunetError, match="cases_shared_with.json: is damaged"):
        list_cases(other)
