"""PNGs of one slice: the image, the labels over it and, if given, the reference labels over it, side by
side, enlarged, with a legend by label name (``pnnunet_plot_overlay``, ``pnnunet_plot_overlay_pngs``).

The slice is the one with the most foreground along the first array axis, as upstream's overlay plots
(no spacing is taken into account). Label colours are the project's one label → colour map
(:func:`pnnunet.dataset.label_colors.default_color`, as in reports, DICOM-SEG and the web viewer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pnnunet.dataset.label_colors import default_color
from pnnunet.errors import PnnunetError
from pnnunet.fileio import atomic_path
from pnnunet.preprocessing.storage import load_preprocessed_case

MIN_PANEL_PX = 384  # short side of each panel after (nearest-neighbour) enlargement


def pick_slice(seg: np.ndarray) -> int:
    """Index along axis 0 with the most foreground (the middle slice if there is none). seg: (X, Y, Z)."""
    counts = (seg > 0).reshape(seg.shape[0], -1).sum(1)
    return int(np.argmax(counts)) if counts.max() > 0 else seg.shape[0] // 2


def label_colour(label: int) -> np.ndarray:
    """RGB in [0, 1] of a label value (by value: the same label has the same colour in every panel)."""
    return np.asarray(default_color(int(label)), dtype=float) / 255.0


def overlay_rgb(image: np.ndarray, seg: np.ndarray | None, alpha: float = 0.5) -> np.ndarray:
    """2D image (X, Y) and labels (X, Y) (None: the image alone) → uint8 RGB (X, Y, 3)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - lo) / max(hi - lo, 1e-8), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if seg is not None:
        for label in sorted(int(v) for v in np.unique(seg) if v > 0):
            mask = seg == label
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * label_colour(label)
    return (rgb * 255).round().astype(np.uint8)


def enlarge(rgb: np.ndarray, min_px: int = MIN_PANEL_PX) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor so that the short side is ≥ ``min_px``."""
    factor = max(1, -(-min_px // min(rgb.shape[:2])))
    return rgb.repeat(factor, axis=0).repeat(factor, axis=1)


def side_by_side(panels: list[tuple[str, np.ndarray]], legend: dict[int, str], dpi: int = 100) -> Figure:
    """A figure of equally sized RGB panels (title, uint8 array) in a row and a legend (label → name) below."""
    h, w = panels[0][1].shape[:2]
    gap, top, bottom = 12, 34, 46 if legend else 12
    width, height = len(panels) * w + (len(panels) + 1) * gap, h + top + bottom
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    for i, (title, rgb) in enumerate(panels):
        ax = fig.add_axes([(gap + i * (w + gap)) / width, bottom / height, w / width, h / height])
        ax.imshow(rgb, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title, fontsize=13)
    if legend:
        handles = [Patch(facecolor=label_colour(v), label=f"{v}: {name}") for v, name in sorted(legend.items())]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=12)
    return fig


def save_overlay_png(image_files: list[Path], seg_file: Path, output_png: Path, reader_writer,
                     slice_index: int | None = None, channel: int = 0, alpha: float = 0.5,
                     reference_file: Path | None = None, label_names: dict[int, str] | None = None) -> int:
    """Write image | prediction (``seg_file``) [| reference] of one slice of channel ``channel``; return
    the slice used (default: the one with the most foreground in the reference, else in ``seg_file``).
    ``label_names``: value → name for the legend (default ``label <v>``; background is left out)."""
    data, _ = reader_writer.read_images([str(f) for f in image_files])
    segs = {"prediction": seg_file}
    if reference_file is not None:
        segs["reference"] = reference_file
    arrays = {}
    for what, path in segs.items():
        seg, _ = reader_writer.read_seg(str(path))
        if data.shape[1:] != seg.shape[1:]:
            raise PnnunetError(f"{path}: shape {seg.shape[1:]} differs from the image's {data.shape[1:]}\n"
                               f"  fix: give the {what} segmentation of this image")
        arrays[what] = seg[0]
    return write_overlay_png(_channel(data, channel, image_files[0]), arrays, output_png, slice_index, alpha,
                             label_names)


def save_preprocessed_overlay_png(folder: Path, case: str, output_png: Path, channel: int = 0,
                                  alpha: float = 0.5) -> int:
    """The overlay of one preprocessed case (its image channel and its seg, -1 outside drawn as background)."""
    data, seg, _ = load_preprocessed_case(folder, case, mmap=False)
    return write_overlay_png(_channel(np.asarray(data), channel, Path(folder) / case),
                             {"labels": np.asarray(seg)[0]}, output_png, None, alpha)


def _channel(data: np.ndarray, channel: int, source: Path) -> np.ndarray:
    if not 0 <= channel < data.shape[0]:
        raise PnnunetError(f"{source}: has {data.shape[0]} channel(s), channel {channel} requested\n"
                           f"  fix: pass -channel_idx between 0 and {data.shape[0] - 1}")
    return data[channel]


def write_overlay_png(image: np.ndarray, segs: dict[str, np.ndarray], output_png: Path,
                      slice_index: int | None = None, alpha: float = 0.5,
                      label_names: dict[int, str] | None = None) -> int:
    """PNG of one slice of a 3D image (X, Y, Z): the image alone, then one panel per label map of ``segs``
    (title → labels of the image's shape), side by side; the slice is ``slice_index``, else the one with
    the most foreground in the last label map. Returns the slice used."""
    arrays = {what: np.asarray(a).astype(np.int32) for what, a in segs.items()}
    idx = pick_slice(list(arrays.values())[-1]) if slice_index is None else slice_index
    if not 0 <= idx < image.shape[0]:
        raise PnnunetError(f"--slice {idx}: out of range, the image has {image.shape[0]} slices along its first axis\n"
                           f"  fix: choose 0 to {image.shape[0] - 1}")
    plane = np.asarray(image[idx], dtype=np.float32)
    panels = [("image", enlarge(overlay_rgb(plane, None)))]
    panels += [(what, enlarge(overlay_rgb(plane, a[idx], alpha))) for what, a in arrays.items()]
    present = sorted({int(v) for a in arrays.values() for v in np.unique(a[idx]) if v > 0})
    names = label_names or {}
    fig = side_by_side(panels, {v: names.get(v, f"label {v}") for v in present})
    with atomic_path(Path(output_png)) as tmp:
        FigureCanvasAgg(fig)
        fig.savefig(str(tmp), format="png", dpi=fig.dpi, facecolor="white")
    return idx
