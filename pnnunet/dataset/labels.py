"""Label bookkeeping derived from dataset.json ``labels`` (reference §1.4, Appendix E).

Label mode: every ``labels`` value is an int; the network has one softmax output per label
(background included). Region mode: at least one value is a list with more than one entry; the
network has one sigmoid output per foreground region and ``regions_class_order`` says which
integer to paint for each region. An ``ignore`` entry is never predicted and must be
``max(other labels) + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnnunet.errors import DatasetError

Region = int | tuple[int, ...]


@dataclass(frozen=True)
class LabelInfo:
    """What the pipeline needs to know about a dataset's labels (upstream ``LabelManager``).

    Attributes
    ----------
    all_labels : sorted unique integers of all ``labels`` values (regions flattened), ignore excluded.
    foreground_labels : ``all_labels`` without 0.
    ignore_label : the ``ignore`` value, or None.
    has_regions : True when some value is a list of length > 1 (region mode).
    foreground_regions : region mode: the non-background entries in dataset.json order (lists as
        tuples, ints as ints). Label mode: equal to ``foreground_labels`` (what evaluation and
        postprocessing iterate over in either mode).
    regions_class_order : dataset.json ``regions_class_order`` (region mode), else None.
    num_segmentation_heads : ``len(all_labels)`` (label mode) or ``len(foreground_regions)`` (regions).
    names : integer → name for every entry whose value is a single integer (background and ignore included).
    num_labels_for_planning : ``len(labels)``, the class count upstream's VRAM estimate uses
        (includes background, ignore and region entries; reference Appendix G.3).
    """

    all_labels: list[int]
    foreground_labels: list[int]
    ignore_label: int | None
    has_regions: bool
    foreground_regions: list[Region]
    regions_class_order: list[int] | None
    num_segmentation_heads: int
    names: dict[int, str]
    num_labels_for_planning: int

    @property
    def has_ignore_label(self) -> bool:
        return self.ignore_label is not None

    @property
    def expected_values(self) -> list[int]:
        """Values a label file may contain: ``all_labels`` plus the ignore label (reference §1.1)."""
        return self.all_labels + ([self.ignore_label] if self.ignore_label is not None else [])

    @classmethod
    def from_dataset_json(cls, d: dict, source: Path | str = "dataset.json") -> "LabelInfo":
        """Build from a dataset.json dict (needs ``labels``; uses ``regions_class_order`` if present).

        Raises
        ------
        DatasetError : background missing or not 0, ignore label not an int or not max+1, region mode
            without a matching ``regions_class_order``, non-integer values.
        """
        labels = d.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise DatasetError(source, "dataset.json has no 'labels' object",
                               'add "labels": {"background": 0, "name": 1, ...}')
        if "background" not in labels:
            raise DatasetError(source, f"labels have no 'background' entry ({labels})",
                               'add "background": 0 (nnU-Net requires background to be label 0)')
        bg = labels["background"]
        if isinstance(bg, (list, tuple)) or not _is_int(bg) or bg != 0:
            raise DatasetError(source, f"background must be the single integer 0, found {bg!r}",
                               'set "background": 0 and renumber the other labels from 1')
        values = {k: _as_ints(k, v, source) for k, v in labels.items()}

        ignore = labels.get("ignore")
        if ignore is not None and not _is_int(ignore):
            raise DatasetError(source, f"the ignore label must be a single integer, found {ignore!r}",
                               "give 'ignore' one integer value, the largest label + 1")
        all_labels = sorted({x for k, v in values.items() if k != "ignore" for x in v})
        if ignore is not None and ignore != max(all_labels) + 1:
            raise DatasetError(source, f"the ignore label is {ignore} but must be the largest label + 1 "
                                       f"(= {max(all_labels) + 1})",
                               f"set 'ignore' to {max(all_labels) + 1} and change the label files to match")

        has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
        rco = d.get("regions_class_order")
        if has_regions:
            regions = [_region(v) for k, v in labels.items() if k != "ignore" and not _is_background(v)]
            if rco is None or not isinstance(rco, list) or len(rco) != len(regions):
                raise DatasetError(source, f"region-based labels need 'regions_class_order' with one integer per "
                                           f"region ({len(regions)} regions), found {rco!r}",
                                   "add regions_class_order, e.g. [1, 2, 3], the label painted for each region")
            _check_regions(labels, rco, all_labels, source)
            heads = len(regions)
        else:
            regions = [x for x in all_labels if x != 0]
            heads = len(all_labels)
        names = {int(v): k for k, v in labels.items() if _is_int(v)}
        return cls(all_labels=all_labels, foreground_labels=[x for x in all_labels if x != 0],
                   ignore_label=ignore, has_regions=has_regions, foreground_regions=regions,
                   regions_class_order=list(rco) if (has_regions and rco is not None) else None,
                   num_segmentation_heads=heads, names=names, num_labels_for_planning=len(labels))


def _check_regions(labels: dict, rco: list, all_labels: list[int], source: Path | str) -> None:
    """Region mode: ``regions_class_order`` paints existing labels, and every label a region names
    exists, i.e. is a label of its own (an integer entry) or is painted by ``regions_class_order``
    (a label only ever named inside regions and never painted could not be predicted)."""
    if not all(_is_int(v) for v in rco):
        raise DatasetError(source, f"regions_class_order must be integers, found {rco!r}",
                           "give one integer label per region, e.g. [1, 2, 3]")
    unknown = [v for v in rco if v not in all_labels or v == 0]
    if unknown:
        raise DatasetError(source, f"regions_class_order paints {unknown}, which no label has (labels: "
                                   f"{[x for x in all_labels if x != 0]})",
                           "use only foreground label values of 'labels' in regions_class_order")
    existing = {int(v) for k, v in labels.items() if k != "ignore" and _is_int(v)} | {int(v) for v in rco}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            missing = sorted({int(x) for x in value} - existing - {0})
            if missing:
                raise DatasetError(source, f"region '{name}' = {list(value)} names label(s) {missing} that do not "
                                           f"exist (neither a label of their own nor painted by "
                                           f"regions_class_order {rco})",
                                   f"add the label(s) to 'labels' (e.g. \"name\": {missing[0]}) or to "
                                   "regions_class_order, or remove them from the region")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _as_ints(name: str, v: Any, source: Path | str) -> list[int]:
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    if not items or not all(_is_int(x) for x in items):
        raise DatasetError(source, f"label '{name}' has value {v!r}; values must be integers "
                                   "(or, for a region, a list of integers)",
                           "use integer label values (background 0, then 1, 2, ...)")
    return items


def _is_background(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return set(v) == {0}
    return v == 0


def _region(v: Any) -> Region:
    return tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else int(v)
