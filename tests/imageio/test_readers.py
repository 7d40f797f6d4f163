"""Readers/writers keep geometry and follow nnU-Net's array convention (reference §1.2)."""

import numpy as np
import pytest
import SimpleITK as sitk
from skimage import io as skio

from pnnunet.errors import DatasetError
from pnnunet.imageio import NaturalImage2DIO, SimpleITKIO, reader_writer_by_name, reader_writer_for


def _write_sitk(path, arr, spacing, origin=None, direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    if origin is not None:
        img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha", ".nii"])
def test_sitk_3d_roundtrip_keeps_geometry(tmp_path, ending):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # numpy (z, y, x)
    direction = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)
    src = tmp_path / f"a{ending}"
    _write_sitk(src, arr, (0.5, 0.7, 3.0), (1.0, 2.0, 3.0), direction)
    rw = reader_writer_for(ending, src)
    assert isinstance(rw, SimpleITKIO)
    data, props = rw.read_images([src])
    assert data.shape == (1, 4, 5, 6) and data.dtype == np.float32
    assert props["spacing"] == pytest.approx([3.0, 0.7, 0.5])  # reversed: array order
    seg = (arr % 3).astype(np.uint8)
    out = tmp_path / f"seg{ending}"
    rw.write_seg(seg, out, props)
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), seg)
    assert np.allclose(back.GetSpacing(), (0.5, 0.7, 3.0))
    assert np.allclose(back.GetOrigin(), (1.0, 2.0, 3.0))
    assert np.allclose(back.GetDirection(), direction)


def test_sitk_2d_gets_dummy_axis(tmp_path):
    src = tmp_path / "a.nii.gz"
    _write_sitk(src, np.ones((7, 9), np.float32), (0.4, 0.6))
    data, props = SimpleITKIO().read_images([src])
    assert data.shape == (1, 1, 7, 9)
    assert props["spacing"] == pytest.approx([0.6 * 999, 0.6, 0.4], rel=1e-6)
    out = tmp_path / "s.nii.gz"
    SimpleITKIO().write_seg(np.ones((1, 7, 9), np.uint8), out, props)
    assert sitk.ReadImage(str(out)).GetDimension() == 2


def test_sitk_4d_file_becomes_channels(tmp_path):
    arr = np.stack([np.zeros((3, 4, 5)), np.ones((3, 4, 5))]).astype(np.float32)  # (c, z, y, x)
    src = tmp_path / "a.nii.gz"
    img = sitk.GetImageFromArray(arr, isVector=False)
    img.SetSpacing((1.0, 2.0, 3.0, 1.0))
    sitk.WriteImage(img, str(src))
    data, props = SimpleITKIO().read_images([src])
    assert data.shape == (2, 3, 4, 5) and props["spacing"] == [3.0, 2.0, 1.0]
    assert data[1].min() == 1


def test_channel_shape_mismatch_names_the_files(tmp_path):
    a, b = tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"
    _write_sitk(a, np.zeros((3, 4, 5), np.float32), (1, 1, 1))
    _write_sitk(b, np.zeros((3, 4, 6), np.float32), (1, 1, 1))
    with pytest.raises(DatasetError, match="c_0001.nii.gz"):
        SimpleITKIO().read_images([a, b])


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="broken.nii.gz: cannot be read"):
        SimpleITKIO().read_images([bad])


def test_png_grey_and_rgb(tmp_path):
    grey = (np.arange(6 * 8).reshape(6, 8) % 255).astype(np.uint8)
    skio.imsave(str(tmp_path / "g.png"), grey, check_contrast=False)
    rgb = np.stack([grey, grey + 1, grey + 2], -1).astype(np.uint8)
    skio.imsave(str(tmp_path / "c.png"), rgb, check_contrast=False)
    rw = reader_writer_for(".png", tmp_path / "g.png")
    assert isinstance(rw, NaturalImage2DIO)
    d, props = rw.read_images([tmp_path / "g.png"])
    assert d.shape == (1, 1, 6, 8) and props["spacing"] == [999.0, 1.0, 1.0]
    assert np.array_equal(d[0, 0], grey)
    d, _ = rw.read_images([tmp_path / "c.png"])
    assert d.shape == (3, 1, 6, 8) and np.array_equal(d[2, 0], grey + 2)
    rw.write_seg(np.ones((1, 6, 8), np.uint8), tmp_path / "s.png", props)
    assert np.array_equal(skio.imread(str(tmp_path / "s.png")), np.ones((6, 8)))


def test_unsupported_ending_and_unknown_reader():
    with pytest.raises(DatasetError, match="file_ending '.jpg' is not supported"):
        reader_writer_for(".jpg")
    with pytest.raises(DatasetError, match="unknown"):
        reader_writer_by_name("TorchIO")
    assert isinstance(reader_writer_by_name("NibabelIOWithReorient"), SimpleITKIO)


@pytest.mark.parametrize("cut", ["half", "trailer"])
def test_issue_14_truncated_nii_gz_is_refused(tmp_path, cut):
    """SimpleITK reads a truncated .nii.gz zero-filled; every read goes through the completeness check."""
    from pnnunet.imageio.simpleitk_io import SimpleITKIO

    f = tmp_path / "img.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32)),
                    str(f), True)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-4])
    sitk.ReadImage(str(f))  # SimpleITK itself does not notice
    with pytest.raises(DatasetError, match="truncated") as e:
        SimpleITKIO().read_images([f])
    assert e.value.path == f


def test_issue_14_short_uncompressed_nii_and_bad_crc(tmp_path):
    from pnnunet.imageio.simpleitk_io import SimpleITKIO

    f = tmp_path / "img.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((10, 10, 10), np.float32)), str(f))
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"4252 bytes \(uncompressed\) where its header announces 4352"):
        SimpleITKIO().read_images([f])
    g = tmp_path / "img.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((10, 10, 10), np.float32)), str(g), True)
    data = bytearray(g.read_bytes())
    data[-8] ^= 0xFF  # the CRC in the gzip trailer
    g.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="corrupt"):
        SimpleITKIO().read_images([g])
