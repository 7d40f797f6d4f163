"""Case statistics against hand computations on constructed volumes and SimpleITK's overlap filters."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from pnnunet.errors import PnnunetError
from pnnunet.evaluation.statistics import (
    case_statistics,
    components,
    surface_distance_percentile,
    write_statistics,
)

SPACING = (0.8, 1.5, 2.5)  # x, y, z in mm
ORIGIN = (-100.0, 20.0, 7.5)
DIRECTION = (1, 0, 0, 0, -1, 0, 0, 0, 1)  # y flipped: the physical box must still come out right


def _write(path, arr, dtype=None):
    img = sitk.GetImageFromArray(arr if dtype is None else arr.astype(dtype))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    sitk.WriteImage(img, str(path), True)
    return path


@pytest.fixture
def case(tmp_path):
    """A (z=12, y=20, x=16) CT-like volume: a liver block at 60 HU, two spleen blobs at 40/50 HU, air elsewhere."""
    image = np.full((12, 20, 16), -1000.0, dtype=np.float32)
    seg = np.zeros(image.shape, dtype=np.uint8)
    seg[2:6, 3:9, 4:10] = 1                                 # liver: 4*6*6 = 144 voxels, interior
    image[seg == 1] = 60.0
    image[3, 5, 6] = 160.0                                  # one bright voxel: max and mean shift
    seg[8:10, 10:12, 0:3] = 2                               # spleen part A: 2*2*3 = 12 voxels, touches x = 0
    seg[8:10, 15:17, 10:12] = 2                             # spleen part B: 2*2*2 = 8 voxels
    image[8:10, 10:12, 0:3] = 40.0
    image[8:10, 15:17, 10:12] = 50.0
    return (_write(tmp_path / "img.nii.gz", image), _write(tmp_path / "seg.nii.gz", seg), image, seg)


def test_volumes_intensities_components_border(case):
    img_file, seg_file, _image, _seg = case
    stats = case_statistics(img_file, seg_file, {"background": 0, "liver": 1, "spleen": 2, "kidney": 3})
    voxel_ml = 0.8 * 1.5 * 2.5 / 1000
    liver, spleen, kidney = (stats["labels"][k] for k in ("liver", "spleen", "kidney"))
    assert liver["voxels"] == 144 and liver["volume_ml"] == pytest.approx(144 * voxel_ml)
    assert spleen["voxels"] == 20 and spleen["volume_ml"] == pytest.approx(20 * voxel_ml)
    hu = np.full(144, 60.0)
    hu[0] = 160.0
    assert liver["intensity"]["mean"] == pytest.approx(hu.mean())                       # 60.694...
    assert liver["intensity"]["std"] == pytest.approx(hu.std())
    assert liver["intensity"]["max"] == 160.0 and liver["intensity"]["min"] == 60.0
    assert liver["intensity"]["median"] == 60.0 and liver["intensity"]["p95"] == 60.0
    sp = np.r_[np.full(12, 40.0), np.full(8, 50.0)]
    assert spleen["intensity"]["mean"] == pytest.approx(44.0)
    assert spleen["intensity"]["p5"] == pytest.approx(np.percentile(sp, 5))
    assert spleen["intensity"]["p95"] == pytest.approx(50.0)
    assert liver["components"] == 1 and liver["largest_component_share"] == 1.0
    assert spleen["components"] == 2 and spleen["largest_component_share"] == pytest.approx(12 / 20)
    assert liver["touches_border"] is False and spleen["touches_border"] is True
    # the border flag reports, never hides: the spleen's values are still there
    assert spleen["voxels"] == 20
    # bbox in (x, y, z) voxel order, inclusive; size in mm = voxels x spacing
    assert liver["bbox_voxels"] == {"min": [4, 3, 2], "max": [9, 8, 5], "size": [6, 6, 4]}
    assert liver["bbox_mm"]["size"] == pytest.approx([6 * 0.8, 6 * 1.5, 4 * 2.5])
    # physical box: x from origin + (4 - 0.5) * 0.8; y flipped: 20 - (8 + 0.5) * 1.5 .. 20 - (3 - 0.5) * 1.5
    assert liver["bbox_mm"]["min"] == pytest.approx([-100 + 3.5 * 0.8, 20 - 8.5 * 1.5, 7.5 + 1.5 * 2.5])
    assert liver["bbox_mm"]["max"] == pytest.approx([-100 + 9.5 * 0.8, 20 - 2.5 * 1.5, 7.5 + 5.5 * 2.5])
    assert liver["centroid_voxels"] == pytest.approx([6.5, 5.5, 3.5])
    assert liver["centroid_mm"] == pytest.approx([-100 + 6.5 * 0.8, 20 - 5.5 * 1.5, 7.5 + 3.5 * 2.5])
    # a label absent from the segmentation: zero volume, undefined (None) intensities, JSON-safe
    assert kidney["voxels"] == 0 and kidney["intensity"]["mean"] is None and kidney["components"] == 0
    json.dumps(stats, allow_nan=False)
    assert stats["spacing_mm"] == pytest.approx(list(SPACING)) and stats["size_voxels"] == [16, 20, 12]


def test_labels_default_to_values_present(case):
    img_file, seg_file, *_ = case
    assert list(case_statistics(img_file, seg_file)["labels"]) == ["label_1", "label_2"]


def test_single_slice_image_border_ignores_the_slice_axis(tmp_path):
    seg = np.zeros((1, 6, 6), np.uint8)
    seg[0, 2:4, 2:4] = 1                      # inside in x and y; z has one slice (a 2D image)
    seg[0, 0, 5] = 2                          # a corner voxel: on the border
    img_file = _write(tmp_path / "i.nii.gz", np.zeros((1, 6, 6), np.float32))
    stats = case_statistics(img_file, _write(tmp_path / "s.nii.gz", seg))
    assert stats["labels"]["label_1"]["touches_border"] is False
    assert stats["labels"]["label_2"]["touches_border"] is True
    assert stats["labels"]["label_1"]["bbox_voxels"] == {"min": [2, 2, 0], "max": [3, 3, 0], "size": [2, 2, 1]}


def test_region_label_is_the_union(case):
    img_file, seg_file, *_ = case
    stats = case_statistics(img_file, seg_file, {"background": 0, "organs": [1, 2]})
    assert stats["labels"]["organs"]["voxels"] == 164 and stats["labels"]["organs"]["label"] == [1, 2]


def test_helpers_on_tiny_masks():
    m = np.zeros((5, 5, 5), bool)
    m[1:3, 1:3, 1:3] = True
    m[4, 4, 4] = True                       # diagonal neighbour of nothing: a second component
    assert components(m) == (2, pytest.approx(8 / 9))
    m2 = m.copy()
    m2[3, 3, 3] = True                      # now joined diagonally (26-connectivity) to both
    assert components(m2)[0] == 1
    assert components(np.zeros((3, 3), bool)) == (0, None)


def _sitk_mask(arr, spacing):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    return img


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 2, 0), (0, 3, 5)])
def test_dice_iou_hausdorff_against_simpleitk(shift):
    rng = np.random.default_rng(7)
    ref = np.zeros((14, 18, 22), bool)
    ref[3:10, 4:12, 5:15] = True
    ref[rng.random(ref.shape) < 0.05] = True                         # speckle: irregular surface
    pred = np.roll(ref, shift, axis=(0, 1, 2))
    pred[6, 2:5, 18:21] = True
    spacing_xyz = (0.7, 1.1, 2.0)
    r, p = _sitk_mask(ref, spacing_xyz), _sitk_mask(pred, spacing_xyz)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(r, p)
    hd = sitk.HausdorffDistanceImageFilter()
    hd.Execute(r, p)
    tp = np.count_nonzero(ref & pred)
    dice = 2 * tp / (ref.sum() + pred.sum())
    assert dice == pytest.approx(overlap.GetDiceCoefficient(1), abs=1e-12)
    spacing_zyx = spacing_xyz[::-1]
    assert surface_distance_percentile(pred, ref, spacing_zyx, 100) == pytest.approx(hd.GetHausdorffDistance(),
                                                                                      abs=1e-9)
    # HD95 from SimpleITK's exact (Maurer) distance maps of the two surfaces, directed both ways
    def directed(a, b):
        surf_b = sitk.LabelContour(_sitk_mask(b, spacing_xyz), fullyConnected=False)
        dmap = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(surf_b, insideIsPositive=False,
                                                                   squaredDistance=False, useImageSpacing=True))
        surf_a = sitk.GetArrayFromImage(sitk.LabelContour(_sitk_mask(a, spacing_xyz), fullyConnected=False)) > 0
        return np.percentile(np.abs(dmap[surf_a]), 95)
    expected = max(directed(pred, ref), directed(ref, pred))
    assert surface_distance_percentile(pred, ref, spacing_zyx, 95) == pytest.approx(expected, abs=1e-6)


def test_reference_comparison_in_case_statistics(case, tmp_path):
    img_file, seg_file, _image, seg = case
    ref = seg.copy()
    ref[2:6, 3:9, 4:12] = np.where(ref[2:6, 3:9, 4:12] == 0, 1, ref[2:6, 3:9, 4:12])  # liver 2 columns wider
    ref[ref == 2] = 0
    ref[8:10, 10:12, 0:3] = 2                                                       # spleen: only part A
    ref_file = _write(tmp_path / "ref.nii.gz", ref, np.uint8)
    stats = case_statistics(img_file, seg_file, {"background": 0, "liver": 1, "spleen": 2}, reference_file=ref_file)
    liver, spleen = stats["labels"]["liver"], stats["labels"]["spleen"]
    n_ref_liver = 4 * 6 * 8
    assert liver["dice"] == pytest.approx(2 * 144 / (144 + n_ref_liver))
    assert liver["iou"] == pytest.approx(144 / n_ref_liver)
    assert liver["volume_difference_percent"] == pytest.approx((144 - n_ref_liver) / n_ref_liver * 100)
    assert liver["hd95"] == pytest.approx(2 * 0.8)                   # two columns along x, 0.8 mm each
    assert spleen["dice"] == pytest.approx(2 * 12 / 32) and spleen["volume_difference_percent"] == pytest.approx(
        (20 - 12) / 12 * 100)
    assert stats["foreground_mean"]["dice"] == pytest.approx((liver["dice"] + spleen["dice"]) / 2)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(sitk.ReadImage(str(ref_file)), sitk.ReadImage(str(seg_file)))
    assert liver["dice"] == pytest.approx(overlap.GetDiceCoefficient(1))
    assert spleen["iou"] == pytest.approx(overlap.GetJaccardCoefficient(2))


def test_write_json_and_csv(case, tmp_path):
    img_file, seg_file, *_ = case
    stats = case_statistics(img_file, seg_file, {"background": 0, "liver": 1, "spleen": 2, "kidney": 3})
    js = write_statistics(stats, tmp_path / "out" / "stats.json")
    assert json.loads(js.read_text())["labels"]["liver"]["voxels"] == 144
    text = write_statistics(stats, tmp_path / "stats.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["name"] for r in rows] == ["liver", "spleen", "kidney"]
    assert float(rows[0]["volume_ml"]) == pytest.approx(stats["labels"]["liver"]["volume_ml"])
    assert float(rows[0]["intensity_mean"]) == pytest.approx(stats["labels"]["liver"]["intensity"]["mean"])
    assert rows[0]["bbox_voxels_size_x"] == "6" and rows[1]["touches_border"] == "True"
    assert rows[2]["intensity_mean"] == "" and rows[2]["components"] == "0"
    with pytest.raises(PnnunetError, match=r"\.json or \.csv"):
        write_statistics(stats, tmp_path / "stats.txt")


def test_bad_inputs_name_the_file(case, tmp_path):
    img_file, seg_file, _image, seg = case
    with pytest.raises(PnnunetError, match="does not exist"):
        case_statistics(tmp_path / "missing.nii.gz", seg_file)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    with pytest.raises(PnnunetError, match="junk.nii.gz: cannot be read"):
        case_statistics(img_file, junk)
    small = tmp_path / "small.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(seg[:5]), str(small))
    with pytest.raises(PnnunetError, match="small.nii.gz: size"):
        case_statistics(img_file, small)
    moved = sitk.ReadImage(str(seg_file))
    moved.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    with pytest.raises(PnnunetError, match="origin"):
        case_statistics(img_file, tmp_path / "moved.nii.gz")
    with pytest.raises(PnnunetError, match="not a label map"):
        case_statistics(img_file, img_file)
