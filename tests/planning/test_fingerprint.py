"""Dataset fingerprint (reference §2): rules on tiny synthetic cases, and upstream's 220-case Hippocampus file."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pnnunet.imageio import SimpleITKIO
from pnnunet.planning.fingerprint import (aggregate_fingerprint, extract_fingerprint, fingerprint_case,
                                          foreground_intensity_samples)
from tests.conftest import REPO, SHARED_DATA, UPSTREAM_HIPPO, require


def _write(path: Path, arr: np.ndarray, spacing_xyz) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing_xyz)
    sitk.WriteImage(im, str(path))
    return path


@pytest.fixture()
def two_cases(tmp_path):
    rs = np.random.RandomState(5)
    cases = {}
    for name, fg in (("b", True), ("a", False)):
        img = np.zeros((6, 8, 10), np.float32)
        img[1:5, 2:7, 1:9] = rs.uniform(1, 50, (4, 5, 8)).astype(np.float32)
        lab = np.zeros((6, 8, 10), np.uint8)
        if fg:
            lab[2:4, 3:5, 2:6] = 1
            lab[3, 3, 6] = 2
        cases[name] = {"images": [_write(tmp_path / f"{name}_0000.nii.gz", img, (0.5, 0.75, 2.0))],
                       "label": _write(tmp_path / f"{name}.nii.gz", lab, (0.5, 0.75, 2.0))}
    return cases


def test_case_fingerprint_rules(two_cases):
    r = fingerprint_case(two_cases["b"]["images"], two_cases["b"]["label"], SimpleITKIO(), 25)
    assert r["spacing"] == [2.0, 0.75, 0.5]                   # reader (array) order
    assert r["shape_after_crop"] == [4, 5, 8]
    assert r["relative_size_after_cropping"] == pytest.approx(4 * 5 * 8 / (6 * 8 * 10))
    # independent: RandomState(1234) draws 25 values with replacement from the seg > 0 voxels (C order)
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(two_cases["b"]["images"][0])))[1:5, 2:7, 1:9]
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(two_cases["b"]["label"])))[1:5, 2:7, 1:9]
    expected = np.random.RandomState(1234).choice(img[lab > 0], 25, replace=True)
    assert r["foreground_samples"][0].dtype == np.float32
    assert np.array_equal(r["foreground_samples"][0], expected)


def test_one_generator_per_case_shared_across_channels():
    data = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)
    seg = np.zeros((1, 3, 3, 3), np.float32)
    seg[0, 1] = 1
    seg[0, 2, 2, 2] = -1
    s = foreground_intensity_samples(data, seg, 7)
    rs = np.random.RandomState(1234)
    assert np.array_equal(s[0], rs.choice(data[0][seg[0] > 0], 7))
    assert np.array_equal(s[1], rs.choice(data[1][seg[0] > 0], 7))


def test_dataset_aggregation_sorted_cases_and_no_foreground_case(two_cases):
    fp = extract_fingerprint(two_cases, SimpleITKIO(), num_processes=0, progress=False, num_total_samples=40)
    assert sorted(fp) == ["foreground_intensity_properties_per_channel", "median_relative_size_after_cropping",
                          "shapes_after_crop", "spacings"]
    assert fp["spacings"] == [[2.0, 0.75, 0.5]] * 2 and fp["shapes_after_crop"] == [[4, 5, 8]] * 2
    # case "a" (sorted first) has no foreground and contributes nothing; "b" draws 40 // 2 = 20 samples
    b = fingerprint_case(two_cases["b"]["images"], two_cases["b"]["label"], SimpleITKIO(), 20)
    samples = np.concatenate([np.empty(0), b["foreground_samples"][0]])  # upstream's [] promotes to float64
    stats = fp["foreground_intensity_properties_per_channel"]["0"]
    assert list(stats) == ["max", "mean", "median", "min", "percentile_00_5", "percentile_99_5", "std"]
    assert stats["mean"] == float(np.mean(samples)) and stats["std"] == float(np.std(samples))
    assert stats["percentile_99_5"] == float(np.percentile(samples, 99.5))
    assert fp["median_relative_size_after_cropping"] == pytest.approx(4 * 5 * 8 / (6 * 8 * 10))


def test_statistics_are_float32_reductions():
    rs = np.random.RandomState(0)
    samples = rs.gamma(2.0, 3000.0, 10**6).astype(np.float32)
    fp = aggregate_fingerprint([{"foreground_samples": [samples], "relative_size_after_cropping": 1.0,
                                 "shape_after_crop": [1, 1, 1], "spacing": [1.0, 1.0, 1.0]}])
    stats = fp["foreground_intensity_properties_per_channel"]["0"]
    assert stats["mean"] == float(np.float32(stats["mean"]))   # a float32 value, not a float64 mean
    assert stats["std"] == float(np.float32(stats["std"]))


@pytest.mark.upstream
def test_hippocampus_220_equals_upstream_fingerprint():
    """220 MSD cases (files without _0000) vs upstream's dataset_fingerprint.json (~15 s with 2 processes)."""
    hippocampus = require(SHARED_DATA / "Task04_Hippocampus")
    ref = json.loads(require(UPSTREAM_HIPPO / "dataset_fingerprint.json").read_text())
    cases = {p.name[: -len(".nii.gz")]: {"images": [p], "label": hippocampus / "labelsTr" / p.name}
             for p in (hippocampus / "imagesTr").glob("*.nii.gz")}
    assert len(cases) == 220
    fp = extract_fingerprint(cases, SimpleITKIO(), num_processes=2, progress=False)
    assert fp["spacings"] == ref["spacings"]
    assert fp["shapes_after_crop"] == ref["shapes_after_crop"]
    assert fp["median_relative_size_after_cropping"] == ref["median_relative_size_after_cropping"]
    # exactly equal (float32 reductions, percentiles, RandomState(1234) draws all reproduced)
    assert fp["foreground_intensity_properties_per_channel"] == ref["foreground_intensity_properties_per_channel"]
    assert json.loads(json.dumps(fp)) == ref


@pytest.mark.upstream
def test_isbi_png_fingerprint_equals_upstream():
    """2D PNG path: fingerprint of 4 real ISBI cases (bundled) equals upstream's on the same cases
    (fixture isbi_2d_sample; the full 30-case set in ../shared matched upstream's isbi_2d too)."""
    from pnnunet.dataset.cases import get_training_cases
    from pnnunet.dataset.dataset_json import load_dataset_json
    from pnnunet.imageio import reader_writer_for

    raw = REPO / "tests" / "data" / "ISBI2012_EM_2D_sample"
    expected = json.loads((Path(__file__).parent / "expected" / "isbi_2d_sample" / "dataset_fingerprint.json")
                          .read_text())
    dj = load_dataset_json(raw / "dataset.json")
    cases = get_training_cases(raw, dj)
    rw = reader_writer_for(dj["file_ending"], next(iter(cases.values()))["images"][0],
                           dj.get("overwrite_image_reader_writer"))
    ours = extract_fingerprint(cases, rw, num_processes=1, progress=False)
    assert ours["spacings"] == expected["spacings"]
    assert ours["shapes_after_crop"] == expected["shapes_after_crop"]
    assert ours["median_relative_size_after_cropping"] == expected["median_relative_size_after_cropping"]
    for key, value in expected["foreground_intensity_properties_per_channel"]["0"].items():
        assert ours["foreground_intensity_properties_per_channel"]["0"][key] == pytest.approx(value, rel=1e-6), key
