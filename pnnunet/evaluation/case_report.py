"""A report per segmented case: a PNG and a self-contained HTML page (``pnnunet_report``, ``pnnunet_predict --report``).

The PNG shows an axial, a coronal and a sagittal slice through the centre of the segmented region
with the labels drawn over the image and a colour legend by label name. The HTML page embeds that PNG
(base64, no file or network access needed: it can be mailed or opened offline) with the header
(case, patient/study/series ids when the case came from DICOM, model and version, date), the
statistics table of :mod:`pnnunet.evaluation.statistics` and the notice that this is research
software, not a medical device.

Views are shown in radiological convention: the volume is reoriented to LPS (permutation and flips
only, no interpolation) so the patient's right is on the image's left, anterior at the top of the
axial view and superior at the top of the coronal and sagittal views; pixels keep their physical
aspect ratio.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

import pnnunet
from pnnunet.dataset.label_colors import label_colors
from pnnunet.evaluation.statistics import case_statistics
from pnnunet.fileio import atomic_path

NOTICE = ("Research use only. pnnunet is not a medical device: these results are not for diagnosis or "
          "treatment decisions and must be checked by a qualified person.")
CT_WINDOW = (-160.0, 240.0)  # soft-tissue window (W 400, L 40) for CT in HU


def case_id(seg_file: Path | str) -> str:
    name = Path(seg_file).name
    for ending in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gipl"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem


def _sidecar(image_file: Path) -> dict:
    """The DICOM sidecar CASE.json written by pnnunet_convert_dicom beside CASE_0000.nii.gz, if any."""
    name = case_id(image_file)
    base = name.removesuffix("_0000")
    f = image_file.with_name(f"{base}.json")
    if f.is_file():
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            return {}
        return d if isinstance(d, dict) and "series_instance_uid" in d else {}
    return {}


def _window(image: np.ndarray, is_ct: bool) -> tuple[float, float]:
    if is_ct:
        return CT_WINDOW
    lo, hi = np.percentile(image, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def _views(image: np.ndarray, seg: np.ndarray, spacing_xyz: tuple[float, ...]) -> list[tuple[str, np.ndarray,
                                                                                              np.ndarray, float]]:
    """(title, image slice, label slice, aspect) for axial, coronal, sagittal; arrays (z, y, x) in LPS.

    Each view shows the slice with the most labelled voxels (the middle slice when there are none)."""
    fg = seg > 0
    k, j, i = (int(np.argmax(fg.sum(axis=tuple(a for a in range(3) if a != axis)))) if fg.any() else n // 2
               for axis, n in enumerate(seg.shape))  # per view the slice with the most foreground
    sx, sy, sz = spacing_xyz
    return [("axial", image[k], seg[k], sy / sx),
            ("coronal", image[::-1, j, :], seg[::-1, j, :], sz / sx),
            ("sagittal", image[::-1, :, i], seg[::-1, :, i], sz / sy)]


def render_overview(image_file: Path | str, seg_file: Path | str, colors: Mapping[str, tuple[int, int, int]],
                    values: Mapping[str, Any], is_ct: bool | None = None, title: str = "") -> bytes:
    """PNG bytes: three orthogonal views with the overlay and a legend (label name -> colour)."""
    img = sitk.DICOMOrient(sitk.ReadImage(str(image_file)), "LPS")
    seg_img = sitk.DICOMOrient(sitk.ReadImage(str(seg_file)), "LPS")
    image = sitk.GetArrayFromImage(img).astype(np.float32)
    seg = sitk.GetArrayFromImage(seg_img).astype(np.int64)
    if image.ndim == 2:
        image, seg = image[None], seg[None]
    if is_ct is None:
        is_ct = bool(image.min() < -500)
    lo, hi = _window(image, is_ct)
    lut = np.zeros((max(int(seg.max()), 0) + 1, 4))
    for name, rgb in colors.items():
        value = values[name]
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if 0 < int(v) < len(lut):
                lut[int(v)] = (*(c / 255 for c in rgb), 0.45)
    fig = Figure(figsize=(12, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (name, im, lab, aspect) in zip(axes, _views(image, seg, img.GetSpacing()[:3])):
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.imshow(lut[np.clip(lab, 0, len(lut) - 1)], aspect=aspect, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    handles = [Patch(color=[c / 255 for c in rgb], label=name) for name, rgb in colors.items()]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86 if title else 0.92, bottom=0.12 + 0.04 * ((len(handles) - 1) // 6), wspace=0.03)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(stats: dict, colors: Mapping[str, tuple[int, int, int]]) -> str:
    compare = stats.get("foreground_mean") is not None
    head = ["", "label", "volume (mL)", "voxels", "mean &plusmn; std", "median", "p5 &ndash; p95", "min &ndash; max",
            "components (largest %)", "border"]
    if compare:
        head += ["Dice", "IoU", "vol. diff. %", "HD95 (mm)"]
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for name, e in stats["labels"].items():
        it = e["intensity"]
        rgb = colors.get(name, (128, 128, 128))
        share = "" if e["largest_component_share"] is None else f" ({100 * e['largest_component_share']:.0f}%)"
        border = ("<span class='warn' title='the label reaches the edge of the image: the organ may be cut off, "
                  "its volume may be too small'>touches border</span>") if e["touches_border"] else "no"
        cells = [f"<span class='sw' style='background:rgb{rgb}'></span>", html.escape(name), _fmt(e["volume_ml"], 2),
                 _fmt(e["voxels"]), f"{_fmt(it['mean'])} &plusmn; {_fmt(it['std'])}", _fmt(it["median"]),
                 f"{_fmt(it['p5'])} &ndash; {_fmt(it['p95'])}", f"{_fmt(it['min'])} &ndash; {_fmt(it['max'])}",
                 f"{e['components']}{share}", border]
        if compare:
            cells += [_fmt(e.get("dice"), 3), _fmt(e.get("iou"), 3), _fmt(e.get("volume_difference_percent"), 1),
                      _fmt(e.get("hd95"), 2)]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if compare:
        fm = stats["foreground_mean"]
        rows.append("<tr class='mean'><td></td><td>foreground mean</td>" + "<td></td>" * 8 +
                    "".join(f"<td>{_fmt(fm[k], d)}</td>" for k, d in (("dice", 3), ("iou", 3),
                                                                       ("volume_difference_percent", 1), ("hd95", 2)))
                    + "</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


_CSS = """body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin-bottom:.2em}.meta td{padding:0 1.2em 0 0;color:#444}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border-bottom:1px solid #ddd;padding:.3em .6em;
text-align:right}th:nth-child(2),td:nth-child(2){text-align:left}tr.mean td{font-weight:bold}
.sw{display:inline-block;width:1em;height:1em;border:1px solid #555;vertical-align:middle}
.warn{color:#a40;font-weight:bold}.notice{border:2px solid #a40;background:#fff4e5;padding:.6em 1em;margin:1em 0}
img{max-width:100%}.small{color:#666;font-size:.85em}"""


def write_case_report(image_file: Path | str, seg_file: Path | str, out_dir: Path | str,
                      labels: Mapping[str, Any] | None = None, stats: dict | None = None,
                      model_info: Mapping[str, Any] | None = None, *, dataset_json: dict | None = None,
                      case_info: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``CASE_report.html`` (self-contained) and ``CASE_report.png`` into ``out_dir``.

    Parameters
    ----------
    image_file, seg_file : the image (one channel) and its label map on the same grid
    out_dir : created if needed
    labels : dataset.json ``labels``; None: the values in the label map as ``label_<v>``
    stats : :func:`pnnunet.evaluation.statistics.case_statistics` output (computed when None)
    model_info : shown in the header, e.g. {"model": "Dataset004 3d_fullres", "folds": "0 1 2 3 4"}
    dataset_json : for ``label_colors``; case_info : patient/study/series ids (default: the DICOM
        sidecar ``CASE.json`` beside the image, when there is one)

    Returns
    -------
    (html_path, png_path)
    """
    image_file, seg_file, out_dir = Path(image_file), Path(seg_file), Path(out_dir)
    if stats is None:
        stats = case_statistics(image_file, seg_file, labels)
    values = {name: e["label"] for name, e in stats["labels"].items()}
    colors = label_colors(values if labels is None else dict(labels), dataset_json)
    colors = {n: c for n, c in colors.items() if n in values}
    case = case_id(seg_file)
    info = dict(case_info) if case_info is not None else _sidecar(image_file)
    if info.get("modality"):
        is_ct = str(info["modality"]).upper() == "CT"
    else:  # no DICOM header: CT if there is air (HU < -500)
        mm = sitk.MinimumMaximumImageFilter()
        mm.Execute(sitk.ReadImage(str(image_file)))
        is_ct = mm.GetMinimum() < -500
    png = render_overview(image_file, seg_file, colors, values, is_ct=is_ct, title=case)
    png_path, html_path = out_dir / f"{case}_report.png", out_dir / f"{case}_report.html"
    with atomic_path(png_path) as tmp:
        tmp.write_bytes(png)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = [("case", case), ("image", image_file.name), ("segmentation", seg_file.name)]
    meta += [(k.replace("_", " "), info[k]) for k in ("patient_id", "study_date", "modality", "series_description",
                                                      "study_instance_uid", "series_instance_uid") if info.get(k)]
    meta += [(str(k), v) for k, v in (model_info or {}).items()]
    meta += [("pnnunet version", pnnunet.__version__), ("date", now),
             ("voxel size (mm)", " x ".join(f"{s:.3g}" for s in stats["spacing_mm"])),
             ("image size (voxels)", " x ".join(map(str, stats["size_voxels"])))]
    unit = "HU" if is_ct else "image units"
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pnnunet report: {html.escape(case)}</title>
<style>{_CSS}</style></head><body>
<h1>Segmentation report: {html.escape(case)}</h1>
<div class="notice"><b>Not a medical device.</b> {html.escape(NOTICE)}</div>
<table class="meta">{''.join(f'<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>' for k, v in meta)}
</table>
<img alt="axial, coronal and sagittal views of {html.escape(case)} with the segmentation" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Statistics</h2>
<p class="small">Intensities in {unit}. Volume = voxels x voxel volume. "touches border": the label reaches the
edge of the image, so the structure may be cut off and its volume underestimated (values are shown, not
hidden). Components: connected pieces (26-connectivity) and the largest one's share.</p>
{_table(stats, colors)}
<p class="small">Made by pnnunet {html.escape(pnnunet.__version__)}, {now}. {html.escape(NOTICE)}</p>
</body></html>
"""
    with atomic_path(html_path) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return html_path, png_path

