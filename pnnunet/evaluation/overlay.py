"""A PNG of one slice with the predicted labels over the image (``pnnunet_plot_overlay``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage import io as skio

from pnnunet.dataset.label_colors import default_color
from pnnunet.errors import PnnunetError
from pnnunet.fileio import atomic_path


def pick_slice(seg: np.ndarray) -> int:
    """Index along axis 0 with the most foreground (the middle slice if there is none). seg: (X, Y, Z)."""
    counts = (seg > 0).reshape(seg.shape[0], -1).sum(1)
    return int(np.argmax(counts)) if counts.max() > 0 else seg.shape[0] // 2


def overlay_rgb(image: np.ndarray, seg: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """2D image (X, Y) and labels (X, Y) → uint8 RGB (X, Y, 3); each label gets its colour by value
    (:func:`pnnunet.dataset.label_colors.default_color`, the same as in reports and DICOM-SEG)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - lo) / max(hi - lo, 1e-8), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label in sorted(int(v) for v in np.unique(seg) if v > 0):
        mask = seg == label
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(default_color(label)) / 255.0
    return (rgb * 255).round().astype(np.uint8)


def save_overlay_png(image_files: list[Path], seg_file: Path, output_png: Path, reader_writer,
                     slice_index: int | None = None, channel: int = 0) -> int:
    """Write the overlay of ``seg_file`` on channel ``channel`` of the image; return the slice used."""
    data, _ = reader_writer.read_images([str(f) for f in image_files])
    seg, _ = reader_writer.read_seg(str(seg_file))
    if data.shape[1:] != seg.shape[1:]:
        raise PnnunetError(f"{seg_file}: shape {seg.shape[1:]} differs from the image's {data.shape[1:]}\n"
                           "  fix: overlay a segmentation predicted for this image")
    seg3 = seg[0].astype(np.int32)
    idx = pick_slice(seg3) if slice_index is None else slice_index
    rgb = overlay_rgb(data[channel][idx], seg3[idx])
    factor = max(1, 256 // min(rgb.shape[:2]))  # small slices are enlarged (nearest) to be readable
    rgb = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
    with atomic_path(Path(output_png)) as tmp:
        skio.imsave(str(tmp), rgb, check_contrast=False)
    return idx
