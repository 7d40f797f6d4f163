"""One colour per label, shared by the report, DICOM-SEG and viewers.

dataset.json may give colours in an optional ``label_colors`` object, name -> ``[r, g, b]`` (0-255)
or ``"#rrggbb"``; labels without one get the default palette by label value (label 1 the first
colour, ...), so the same label has the same colour in every output of a dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pnnunet.errors import DatasetError

# distinct, colour-blind-friendlier colours (Okabe-Ito first, then tab20-like), label 1 -> PALETTE[0]
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167), (255, 0, 0), (0, 255, 255), (148, 103, 189), (140, 86, 75), (188, 189, 34),
    (23, 190, 207), (255, 127, 14), (44, 160, 44), (214, 39, 40), (227, 119, 194), (127, 127, 127),
    (174, 199, 232), (255, 187, 120))


def default_color(label: int) -> tuple[int, int, int]:
    """The palette colour of an integer label (>= 1); cycles after 20 labels."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def _parse(value: Any, name: str, source: Path | str) -> tuple[int, int, int]:
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    elif isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255
                                                                     for v in value):
        return tuple(value)  # type: ignore[return-value]
    raise DatasetError(source, f"label_colors['{name}'] is {value!r}, not [r, g, b] (0-255) or '#rrggbb'",
                       "fix the colour or remove it to use the default palette")


def label_colors(labels: dict[str, Any], dataset_json: dict | None = None,
                 source: Path | str = "dataset.json") -> dict[str, tuple[int, int, int]]:
    """name -> RGB for every foreground label of ``labels`` (a dataset.json ``labels`` object).

    Regions (list values) take the colour of their first label; background and ignore get none.
    """
    given = (dataset_json or {}).get("label_colors") or {}
    out = {}
    for name, value in labels.items():
        if name in ("background", "ignore"):
            continue
        first = value[0] if isinstance(value, (list, tuple)) else value
        if int(first) == 0:
            continue
        out[name] = _parse(given[name], name, source) if name in given else default_color(int(first))
    return out
