import numpy as np
import SimpleITK as sitk
from skimage import io as skio

from pnnunet.evaluation.overlay import overlay_rgb, pick_slice, save_overlay_png
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


def test_save_overlay_png(tmp_path):
    arr = np.random.default_rng(0).random((4, 20, 30)).astype(np.float32)
    seg = np.zeros((4, 20, 30), np.uint8)
    seg[2, 5:10, 5:10] = 1
    for name, a in (("img.nii.gz", arr), ("seg.nii.gz", seg)):
        sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / name))
    idx = save_overlay_png([tmp_path / "img.nii.gz"], tmp_path / "seg.nii.gz", tmp_path / "o.png", SimpleITKIO())
    assert idx == 2
    png = skio.imread(str(tmp_path / "o.png"))
    assert png.shape == (20 * 12, 30 * 12, 3)  # enlarged ×12 to ≥ 256 px on the short side
