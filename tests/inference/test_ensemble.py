"""Ensembling prediction folders (pnnunet.inference.ensemble; reference §8.2 step 3, §8.3).

Expected outputs are computed by hand in the test: the float32 mean of the two probability arrays,
then argmax (labels) or regions painted in ``regions_class_order`` where the mean is > 0.5.
"""

import json

import numpy as np
import pytest

from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.imageio import SimpleITKIO
from pnnunet.inference.ensemble import (
    MissingProbabilitiesError,
    average_probabilities,
    ensemble_crossvalidations,
    ensemble_folders,
)
from tests.postprocessing.synthetic import (
    DATASET_JSON,
    FILE_ENDING,
    PROPS,
    REGION_DATASET_JSON,
    plans,
    read_seg,
    write_json,
    write_probabilities,
)

SHAPE = (3, 5, 4)
CASES = ("case_a", "case_b", "case_c")


def _random_probs(rng, k=3):
    p = rng.random((k, *SHAPE)).astype(np.float32) + 0.05
    return p / p.sum(axis=0, keepdims=True)


def _prediction_folder(path, probs_by_case, dataset_json=DATASET_JSON):
    for case, p in probs_by_case.items():
        write_probabilities(path, case, p)
    write_json(path / "dataset.json", dataset_json)
    write_json(path / "plans.json", plans())
    return path


def test_two_folders_equal_hand_average(tmp_path):
    rng = np.random.default_rng(1234)
    p1 = {c: _random_probs(rng) for c in CASES}
    p2 = {c: _random_probs(rng) for c in CASES}
    f1 = _prediction_folder(tmp_path / "m1", p1)
    f2 = _prediction_folder(tmp_path / "m2", p2)
    out = tmp_path / "ens"
    written = ensemble_folders([f1, f2], out, save_npz=True, num_processes=2)
    assert [p.name for p in written] == [f"{c}{FILE_ENDING}" for c in CASES]
    for c in CASES:
        mean = (p1[c] + p2[c]) / np.float32(2)
        seg = read_seg(out / f"{c}{FILE_ENDING}")
        np.testing.assert_array_equal(seg, np.argmax(mean, axis=0))
        with np.load(out / f"{c}.npz") as z:
            assert z["probabilities"].dtype == np.float32
            np.testing.assert_allclose(z["probabilities"], mean, rtol=0, atol=1e-7)
        assert json.loads((out / f"{c}.json").read_text()) == PROPS
    # geometry of the first folder, and its dataset.json / plans.json in the output
    _, props = SimpleITKIO().read_seg(out / f"{CASES[0]}{FILE_ENDING}")
    assert props["sitk_stuff"]["spacing"] == PROPS["sitk_stuff"]["spacing"]
    assert json.loads((out / "dataset.json").read_text()) == DATASET_JSON
    assert json.loads((out / "plans.json").read_text())["image_reader_writer"] == "SimpleITKIO"


def test_three_folders_and_no_npz_without_flag(tmp_path):
    rng = np.random.default_rng(7)
    probs = [{c: _random_probs(rng) for c in CASES[:1]} for _ in range(3)]
    folders = [_prediction_folder(tmp_path / f"m{i}", p) for i, p in enumerate(probs)]
    ensemble_folders(folders, tmp_path / "ens", num_processes=1)
    mean = sum(p[CASES[0]] for p in probs) / 3
    np.testing.assert_array_equal(read_seg(tmp_path / "ens" / f"{CASES[0]}{FILE_ENDING}"), np.argmax(mean, axis=0))
    assert not list((tmp_path / "ens").glob("*.npz"))
    np.testing.assert_allclose(average_probabilities([f / f"{CASES[0]}.npz" for f in folders]), mean, atol=1e-6)


def test_region_mode_paints_regions_in_order(tmp_path):
    # channel 0 = whole (1, 2) → paints 1, channel 1 = core (2) → paints 2 afterwards
    a = np.zeros((2, *SHAPE), dtype=np.float32)
    b = np.zeros((2, *SHAPE), dtype=np.float32)
    a[0, 0] = 0.9
    b[0, 0] = 0.2          # mean 0.55 on slice 0 → whole
    a[1, 0, 0] = 0.8
    b[1, 0, 0] = 0.3       # mean 0.55 on row (0, 0) → core
    a[0, 1] = 0.9
    b[0, 1] = 0.0          # mean 0.45 → nothing
    f1 = _prediction_folder(tmp_path / "m1", {"x": a}, REGION_DATASET_JSON)
    f2 = _prediction_folder(tmp_path / "m2", {"x": b}, REGION_DATASET_JSON)
    ensemble_folders([f1, f2], tmp_path / "ens", num_processes=1)
    expected = np.zeros(SHAPE, dtype=np.uint8)
    expected[0] = 1
    expected[0, 0] = 2
    np.testing.assert_array_equal(read_seg(tmp_path / "ens" / f"x{FILE_ENDING}"), expected)


def test_mismatched_case_sets_name_folders_and_cases(tmp_path):
    rng = np.random.default_rng(0)
    f1 = _prediction_folder(tmp_path / "m1", {c: _random_probs(rng) for c in CASES})
    f2 = _prediction_folder(tmp_path / "m2", {c: _random_probs(rng) for c in CASES[:2]})
    with pytest.raises(PnnunetError) as e:
        ensemble_folders([f1, f2], tmp_path / "ens", num_processes=1)
    assert "m2 lacks 1 case(s): case_c" in str(e.value)
    assert not (tmp_path / "ens").exists()


def test_clear_errors(tmp_path):
    rng = np.random.default_rng(0)
    f1 = _prediction_folder(tmp_path / "m1", {"a": _random_probs(rng)})
    f2 = _prediction_folder(tmp_path / "m2", {"a": _random_probs(rng, k=2)})
    with pytest.raises(PnnunetError, match="is one of the input folders"):
        ensemble_folders([f1, f2], f1)
    with pytest.raises(PnnunetError, match="at least two"):
        ensemble_folders([f1], tmp_path / "o")
    with pytest.raises(DatasetError, match="shape"):
        ensemble_folders([f1, f2], tmp_path / "o", num_processes=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingProbabilitiesError, match="--save_probabilities"):
        ensemble_folders([f1, empty], tmp_path / "o")
    f3 = _prediction_folder(tmp_path / "m3", {"a": _random_probs(rng)})
    (f1 / "a.json").unlink()
    with pytest.raises(DatasetError, match="properties file missing"):
        ensemble_folders([f1, f3], tmp_path / "o", num_processes=1)


def _model(root, name, folds_cases, rng, npz=True):
    model = root / name
    for fold, cases in folds_cases.items():
        for c in cases:
            write_probabilities(model / f"fold_{fold}" / "validation", c, _random_probs(rng))
            if not npz:
                (model / f"fold_{fold}" / "validation" / f"{c}.npz").unlink()
    write_json(model / "dataset.json", DATASET_JSON)
    write_json(model / "plans.json", plans())
    return model


def test_crossvalidation_ensemble_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    m1 = _model(tmp_path, "T__P__2d", {0: ["a", "b"], 1: ["c"]}, rng)
    m2 = _model(tmp_path, "T__P__3d_fullres", {0: ["a"], 1: ["b", "c"]}, rng)  # other split: allowed
    out = tmp_path / "ens"
    ensemble_crossvalidations([m1, m2], out, folds=(0, 1), num_processes=1)
    for c, (f1, f2) in {"a": (0, 0), "b": (0, 1), "c": (1, 1)}.items():
        with np.load(m1 / f"fold_{f1}" / "validation" / f"{c}.npz") as z1, \
                np.load(m2 / f"fold_{f2}" / "validation" / f"{c}.npz") as z2:
            mean = (z1["probabilities"] + z2["probabilities"]) / 2
        np.testing.assert_array_equal(read_seg(out / f"{c}{FILE_ENDING}"), np.argmax(mean, axis=0))
    assert (out / "plans.json").is_file() and (out / "dataset.json").is_file()

    with pytest.raises(DatasetError, match="fold 2"):
        ensemble_crossvalidations([m1, m2], out, folds=(0, 1, 2))
    dup = _model(tmp_path, "T__P__dup", {0: ["a", "b"], 1: ["b", "c"]}, rng)
    with pytest.raises(DatasetError, match="case b"):
        ensemble_crossvalidations([m1, dup], out, folds=(0, 1))
    partial = _model(tmp_path, "T__P__partial", {0: ["a"], 1: ["c"]}, rng)
    with pytest.raises(PnnunetError, match="T__P__partial lacks 1 case"):
        ensemble_crossvalidations([m1, partial], out, folds=(0, 1))
    no_npz = _model(tmp_path, "T__P__nonpz", {0: ["a", "b"], 1: ["c"]}, rng, npz=False)
    with pytest.raises(MissingProbabilitiesError, match="--npz"):
        ensemble_crossvalidations([m1, no_npz], out, folds=(0, 1))
