"""A PNG of one slice: the image, the predicted labels over it and, if given, the reference labels over
it, side by side, enlarged, with a legend by label name (``pnnunet_plot_overlay``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pnnunet.errors import PnnunetError
from pnnunet.fileio import atomic_path

MIN_PANEL_PX = 384  # short side of each panel after (nearest-neighbour) enlargement


def pick_slice(seg: np.ndarray) -> int:
    """Index along axis 0 with the most foreground (the middle slice if there is none). seg: (X, Y, Z)."""
    counts = (seg > 0).reshape(seg.shape[0], -1).sum(1)
    return int(np.argmax(counts)) if counts.max() > 0 else seg.shape[0] // 2


def label_colour(label: int) -> np.ndarray:
    """RGB in [0, 1] of a label value (tab10, by value: the same label has the same colour in every panel)."""
    return np.asarray(colormaps["tab10"].colors[(int(label) - 1) % 10])


def overlay_rgb(image: np.ndarray, seg: np.ndarray | None, alpha: float = 0.5) -> np.ndarray:
    """2D image (X, Y) and labels (X, Y) (None: the image alone) → uint8 RGB (X, Y, 3); each label
    value gets its tab10 colour (:func:`label_colour`)."""
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
                     slice_index: int | None = None, channel: int = 0, reference_file: Path | None = None,
                     label_names: dict[int, str] | None = None) -> int:
    """Write image | prediction (``seg_file``) [| reference] of one slice of channel ``channel``; return
    the slice used (default: the one with the most foreground in the reference, else in the prediction).
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
        arrays[what] = seg[0].astype(np.int32)
    pick = arrays.get("reference", arrays["prediction"])
    idx = pick_slice(pick) if slice_index is None else slice_index
    if not 0 <= idx < data.shape[1]:
        raise PnnunetError(f"--slice {idx}: out of range, the image has {data.shape[1]} slices along its first axis\n"
                           f"  fix: choose 0 to {data.shape[1] - 1}")
    image = data[channel][idx]
    panels = [("image", enlarge(overlay_rgb(image, None)))]
    panels += [(what, enlarge(overlay_rgb(image, a[idx]))) for what, a in arrays.items()]
    present = sorted({int(v) for a in arrays.values() for v in np.unique(a) if v > 0})
    names = label_names or {}
    legend = {v: names.get(v, f"label {v}") for v in present}
    fig = side_by_side(panels, legend)
    with atomic_path(Path(output_png)) as tmp:
        FigureCanvasAgg(fig)
        fig.savefig(str(tmp), format="png", dpi=fig.dpi, facecolor="white")
    return idx
