import json

import numpy as np
import pytest
import SimpleITK as sitk
from skimage import io as skio

from pnnunet.cli import plot_overlay
from pnnunet.evaluation.overlay import MIN_PANEL_PX, label_colour, overlay_rgb, pick_slice, save_overlay_png
from pnnunet.imageio import SimpleITKIO


def test_pick_slice_and_colours():
    seg = np.zeros((5, 4, 4), np.uint8)
    seg[3, :2, :2] = 1
    seg[1, 0, 0] = 2
    assert pick_slice(seg) == 3
    assert pick_slice(np.zeros((6, 2, 2))) == 3
    img = np.linspace(0, 1, 16).reshape(4, 4)
    rgb = overlay_rgb(img, seg[3])
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    assert (rgb[3, 3] == rgb[3, 3, 0]).all()  # background stays grey
    assert not (rgb[0, 0] == rgb[0, 0, 0]).all()  # labelled voxels are coloured
    # colour by label value, as in reports: label 2 looks the same whether or not label 1 is on the slice
    only2 = np.where(seg[3] == 1, 2, 0)
    assert (overlay_rgb(img, only2)[0, 0] != rgb[0, 0]).any()
    assert (overlay_rgb(img, only2)[0, 0] == overlay_rgb(img, np.where(seg[3] == 1, 2, 1))[0, 0]).all()


def _write(tmp_path, **arrays):
    for name, a in arrays.items():
        sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / f"{name}.nii.gz"))


def _panel_pixels(png, colour):
    """Per third of the width, the pixels of the panel rows (title and legend bands left out) near ``colour``."""
    rgb = png[34:-46, :, :3].astype(float) / 255
    near = np.linalg.norm(rgb - colour, axis=-1) < 0.05
    thirds = np.array_split(np.arange(png.shape[1]), 3)
    return [int(near[:, cols].sum()) for cols in thirds]


def test_save_overlay_png_image_prediction_reference(tmp_path):
    """Three enlarged panels side by side; the label colours appear only in the panels that have the
    label (prediction: label 1 only, reference: labels 1 and 2), chosen by the reference's slice."""
    img = np.zeros((4, 20, 30), np.float32)  # black: a labelled pixel is half its label's colour
    pred = np.zeros((4, 20, 30), np.uint8)
    ref = np.zeros((4, 20, 30), np.uint8)
    pred[1, 2:18, 2:14] = 1  # more foreground on slice 1 in the prediction ...
    ref[2, 5:10, 5:10] = 1   # ... but the reference's slice 2 is the one shown
    ref[2, 12:18, 15:25] = 2
    pred[2, 5:10, 5:10] = 1
    _write(tmp_path, img=img, pred=pred, ref=ref)
    idx = save_overlay_png([tmp_path / "img.nii.gz"], tmp_path / "pred.nii.gz", tmp_path / "o.png", SimpleITKIO(),
                           reference_file=tmp_path / "ref.nii.gz", label_names={1: "Anterior", 2: "Posterior"})
    assert idx == 2
    png = skio.imread(str(tmp_path / "o.png"))
    assert png.shape[0] >= MIN_PANEL_PX and png.shape[1] >= 3 * MIN_PANEL_PX * 30 // 20
    one, two = _panel_pixels(png, 0.5 * label_colour(1)), _panel_pixels(png, 0.5 * label_colour(2))
    assert one[0] == 0 and one[1] > 0 and one[2] > 0  # image alone | prediction | reference
    assert two[0] == 0 and two[1] == 0 and two[2] > 0


def test_plot_overlay_cli_legend_names_and_errors(tmp_path, capsys):
    img = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    seg = np.zeros((3, 16, 16), np.uint8)
    seg[1, 4:9, 4:9] = 1
    _write(tmp_path, img=img, seg=seg)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "Anterior": 1, "Posterior": 2},
                                                       "channel_names": {"0": "MRI"}, "numTraining": 1,
                                                       "file_ending": ".nii.gz"}))
    out = tmp_path / "o.png"
    assert plot_overlay.main(["-i", str(tmp_path / "img.nii.gz"), "-s", str(tmp_path / "seg.nii.gz"),
                              "-ref", str(tmp_path / "seg.nii.gz"), "-o", str(out)]) == 0
    assert "slice 1" in capsys.readouterr().out and out.is_file()
    assert plot_overlay._label_names(None, tmp_path / "seg.nii.gz") == {1: "Anterior", 2: "Posterior"}
    assert plot_overlay.main(["-i", str(tmp_path / "img.nii.gz"), "-s", str(tmp_path / "seg.nii.gz"),
                              "-djfile", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.png")]) == 1
    assert "missing.json: not found" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    with pytest.raises(Exception, match="out of range"):
        save_overlay_png([tmp_path / "img.nii.gz"], tmp_path / "seg.nii.gz", tmp_path / "y.png", SimpleITKIO(),
                         slice_index=7)
