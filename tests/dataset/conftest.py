"""Tiny synthetic raw datasets (v2, MSD, PNG) written into tmp_path for the dataset tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from skimage import io as skio

HIPPO = Path("/work/shared/data/Task04_Hippocampus")
ISBI = Path("/work/shared/data/ISBI2012_EM_2D")
SHAPE = (8, 10, 12)  # numpy order (z, y, x)
SPACING = (0.7, 0.8, 2.5)  # SimpleITK order (x, y, z)
ORIGIN = (3.0, -4.0, 5.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
LABELS = {"background": 0, "a": 1, "b": 2}


def write_nifti(path: Path, arr: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> Path:
    """Write a 3D numpy array (z, y, x) with the given SimpleITK geometry (format from the ending)."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)
    return path


def random_label(rng: np.random.Generator, shape=SHAPE, n_labels: int = 3) -> np.ndarray:
    seg = rng.integers(0, n_labels, size=shape).astype(np.uint8)
    seg.flat[:n_labels] = np.arange(n_labels)  # every label present
    return seg


def make_v2_dataset(root: Path, name: str = "Dataset001_Test", n_cases: int = 3, n_channels: int = 2,
                    labels: dict | None = None, seed: int = 0, file_ending: str = ".nii.gz", **extra) -> Path:
    """``root/name`` in v2 layout with cases case_000 .. case_{n-1}, random images and labels."""
    rng = np.random.default_rng(seed)
    labels = dict(LABELS if labels is None else labels)
    folder = root / name
    for i in range(n_cases):
        case = f"case_{i:03d}"
        for c in range(n_channels):
            write_nifti(folder / "imagesTr" / f"{case}_{c:04d}{file_ending}", rng.normal(size=SHAPE).astype(np.float32))
        write_nifti(folder / "labelsTr" / f"{case}{file_ending}", random_label(rng, n_labels=len(labels)))
    dj = {"channel_names": {str(c): f"ch{c}" for c in range(n_channels)}, "labels": labels,
          "numTraining": n_cases, "file_ending": file_ending, **extra}
    (folder / "dataset.json").write_text(json.dumps(dj, indent=1))
    return folder


def make_msd_folder(root: Path, name: str = "Task07_Twochan", n_cases: int = 2, n_channels: int = 2,
                    with_test: bool = True, seed: int = 0) -> Path:
    """An MSD folder: 4D images (c, z, y, x; 3D if one channel) without ``_0000``, MSD dataset.json."""
    rng = np.random.default_rng(seed)
    folder = root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    (folder / "imagesTs" / ".gitkeep").write_text("")

    def image4d(path: Path) -> None:
        if n_channels == 1:  # single-channel MSD tasks store 3D files
            write_nifti(path, rng.normal(size=SHAPE).astype(np.float32))
            return
        img = sitk.GetImageFromArray(rng.normal(size=(n_channels, *SHAPE)).astype(np.float32), isVector=False)
        d4 = np.eye(4)
        d4[:3, :3] = np.reshape(DIRECTION, (3, 3))
        img.SetSpacing((*SPACING, 1.0))
        img.SetOrigin((*ORIGIN, 0.0))
        img.SetDirection(d4.ravel().tolist())
        sitk.WriteImage(img, str(path), True)

    training = []
    for i in range(n_cases):
        case = f"tc_{i + 1:03d}"
        image4d(folder / "imagesTr" / f"{case}.nii.gz")
        write_nifti(folder / "labelsTr" / f"{case}.nii.gz", random_label(rng))
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    test = []
    if with_test:
        image4d(folder / "imagesTs" / "tc_900.nii.gz")
        test.append("./imagesTs/tc_900.nii.gz")
    dj = {"name": "Twochan", "description": "synthetic", "tensorImageSize": "4D",
          "modality": {str(c): ["T2", "ADC", "X", "Y"][c] for c in range(n_channels)},
          "labels": {"0": "background", "1": "left", "2": "right"},
          "numTraining": n_cases, "numTest": len(test), "training": training, "test": test}
    (folder / "dataset.json").write_text(json.dumps(dj, indent=4))
    return folder


def make_png_dataset(root: Path, name: str = "EM_toy", n_cases: int = 3, seed: int = 0, **extra) -> Path:
    """A v2-layout PNG dataset (one grey channel, labels 0/1) without a DatasetXXX_ prefix."""
    rng = np.random.default_rng(seed)
    folder = root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "imagesTs").mkdir()
    for i in range(n_cases):
        skio.imsave(str(folder / "imagesTr" / f"em_{i:02d}_0000.png"), rng.integers(0, 255, (16, 20), dtype=np.uint8),
                    check_contrast=False)
        seg = rng.integers(0, 2, (16, 20)).astype(np.uint8)
        seg[0, 0], seg[0, 1] = 0, 1
        skio.imsave(str(folder / "labelsTr" / f"em_{i:02d}.png"), seg, check_contrast=False)
    skio.imsave(str(folder / "imagesTs" / "em_test.png"), rng.integers(0, 255, (16, 20), dtype=np.uint8),
                check_contrast=False)
    dj = {"channel_names": {"0": "EM"}, "labels": {"background": 0, "membrane": 1}, "numTraining": n_cases,
          "file_ending": ".png", "name": "EM toy", **extra}
    (folder / "dataset.json").write_text(json.dumps(dj, indent=4))
    return folder


def tree_hashes(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime_ns of every file under ``folder`` (to prove nothing was modified)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def read_geometry(path: Path) -> tuple:
    img = sitk.ReadImage(str(path))
    return img.GetSpacing(), img.GetOrigin(), img.GetDirection()


@pytest.fixture
def synth() -> SimpleNamespace:
    """The helpers above, as a fixture (so test modules need no import from conftest)."""
    return SimpleNamespace(write_nifti=write_nifti, random_label=random_label, make_v2_dataset=make_v2_dataset,
                           make_msd_folder=make_msd_folder, make_png_dataset=make_png_dataset,
                           tree_hashes=tree_hashes, read_array=read_array, read_geometry=read_geometry,
                           SHAPE=SHAPE, SPACING=SPACING, ORIGIN=ORIGIN, DIRECTION=DIRECTION, LABELS=LABELS)


@pytest.fixture
def hippo_dir() -> Path:
    """The real MSD Task04_Hippocampus folder (read-only); skips the test if absent."""
    if not (HIPPO / "dataset.json").is_file():
        pytest.skip("real Task04_Hippocampus not present")
    return HIPPO


@pytest.fixture
def isbi_dir() -> Path:
    """The real ISBI2012_EM_2D v2 folder (read-only); skips the test if absent."""
    if not (ISBI / "dataset.json").is_file():
        pytest.skip("real ISBI2012_EM_2D not present")
    return ISBI
