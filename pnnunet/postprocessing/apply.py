"""Apply a postprocessing recipe (``postprocessing.json``) to segmentations (reference §8.4 step 5).

A recipe is the ordered list of operations accepted by :func:`pnnunet.postprocessing.determine.
determine_postprocessing`, stored as ``postprocessing_fns`` (names) and ``postprocessing_kwargs``
in ``postprocessing.json``. The operations are applied in order to each segmentation file.

Upstream applies ``postprocessing.pkl`` (a pickled tuple of function references and kwargs) and
writes the same decision to ``postprocessing.json``, which has the same two keys and is accepted as
it is. A ``.pkl`` is read as the JSON beside it if there is one; else with a restricted unpickler
that resolves nothing but upstream's postprocessing functions (anything else is refused).
"""

from __future__ import annotations

import io
import logging
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pnnunet.errors import DatasetError
from pnnunet.fileio import atomic_path, read_json_file
from pnnunet.dataset.folders import check_distinct_folders, resolve_io, segmentation_files
from pnnunet.imageio import ImageIO
from pnnunet.parallel import map_in_pool
from pnnunet.postprocessing.components import PP_FN_NAME, remove_all_but_largest_component
from pnnunet.safe_pickle import NUMPY_SCALAR_GLOBALS, AllowListUnpickler

log = logging.getLogger(__name__)

# name in postprocessing.json → function(seg, **kwargs); upstream's name and ours
PP_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    PP_FN_NAME: remove_all_but_largest_component,
    "remove_all_but_largest_component": remove_all_but_largest_component,
}
_KWARG_ALIASES = {"background_label": "background"}  # upstream's keyword → ours


@dataclass(frozen=True)
class PostprocessingStep:
    """One operation of a recipe: a function name from :data:`PP_FUNCTIONS` and its keyword arguments."""

    fn_name: str
    kwargs: dict = field(default_factory=dict)

    def __call__(self, seg: np.ndarray) -> np.ndarray:
        kwargs = {_KWARG_ALIASES.get(k, k): v for k, v in self.kwargs.items()}
        return PP_FUNCTIONS[self.fn_name](seg, **kwargs)


def steps_from_json(pp: dict, source: Path | str = "postprocessing.json") -> list[PostprocessingStep]:
    """The recipe in a ``postprocessing.json`` dict (ours or upstream's).

    Raises
    ------
    DatasetError : keys missing, lists of different lengths, or an unknown function name.
    """
    if not isinstance(pp, dict) or "postprocessing_fns" not in pp or "postprocessing_kwargs" not in pp:
        raise DatasetError(source, "is not a postprocessing.json (needs 'postprocessing_fns' and "
                                   "'postprocessing_kwargs')",
                           "pass the postprocessing.json written by pnnunet_find_best_config")
    fns, kwargs = pp["postprocessing_fns"], pp["postprocessing_kwargs"]
    if len(fns) != len(kwargs):
        raise DatasetError(source, f"has {len(fns)} postprocessing_fns but {len(kwargs)} postprocessing_kwargs",
                           "regenerate the file with pnnunet_find_best_config")
    unknown = [f for f in fns if f not in PP_FUNCTIONS]
    if unknown:
        raise DatasetError(source, f"names unknown postprocessing function(s) {unknown}",
                           f"pnnunet knows {sorted(PP_FUNCTIONS)}")
    return [PostprocessingStep(f, dict(k)) for f, k in zip(fns, kwargs)]


# upstream pickles the labels it found as numpy integers (np.int64) when a postprocessing step was chosen
_PICKLED_FUNCTIONS = {("nnunetv2.postprocessing.remove_connected_components", PP_FN_NAME): PP_FN_NAME,
                      **NUMPY_SCALAR_GLOBALS}


def _refuse(what: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f"it refers to {what}, which a postprocessing file never needs; nothing was run")


def _plain(value):
    """numpy scalars (and lists/tuples/dicts of them) as Python numbers, as the JSON beside the pickle has them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _load_pickled(path: Path) -> dict:
    """``{postprocessing_fns, postprocessing_kwargs}`` from upstream's ``postprocessing.pkl``."""
    try:
        fns, kwargs = AllowListUnpickler(io.BytesIO(path.read_bytes()), _PICKLED_FUNCTIONS, _refuse).load()
        return {"postprocessing_fns": list(fns), "postprocessing_kwargs": [_plain(dict(k)) for k in kwargs]}
    except OSError as e:
        raise DatasetError(path, f"cannot be read ({e.strerror or e})", "check the path") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DatasetError(path, f"refused or not an nnU-Net postprocessing.pkl ({e})",
                           "use the postprocessing.json beside it, or re-run pnnunet_find_best_config") from None


def load_postprocessing(path: Path | str) -> list[PostprocessingStep]:
    """Read the recipe of a ``postprocessing.json`` file (ours or upstream's) or of upstream's
    ``postprocessing.pkl`` (see the module docstring)."""
    path = Path(path)
    if path.suffix == ".pkl":
        beside = path.with_suffix(".json")
        if not beside.is_file():
            return steps_from_json(_load_pickled(path), path)
        path = beside
    pp = read_json_file(path, "run pnnunet_find_best_config first", "postprocessing file")
    return steps_from_json(pp, path)


def apply_postprocessing(seg: np.ndarray, steps: Sequence[PostprocessingStep]) -> np.ndarray:
    """Apply the steps in order. seg: label map (X, Y, Z) → new label map of the same shape."""
    for step in steps:
        seg = step(seg)
    return seg


def postprocess_file(input_file: Path | str, output_file: Path | str, reader_writer: ImageIO,
                     steps: Sequence[PostprocessingStep]) -> Path:
    """Read one segmentation, apply ``steps``, write it with the same geometry (atomic). No steps: copy."""
    output_file = Path(output_file)
    if not steps:
        with atomic_path(output_file) as tmp:
            shutil.copyfile(input_file, tmp)
        return output_file
    seg, properties = reader_writer.read_seg(input_file)
    reader_writer.write_seg(apply_postprocessing(seg[0], steps), output_file, properties)
    return output_file


def apply_postprocessing_to_folder(input_folder: Path | str, output_folder: Path | str,
                                   pp_json: dict | Path | str | Sequence[PostprocessingStep], *,
                                   dataset_json: dict | Path | str | None = None,
                                   plans: dict | Path | str | None = None,
                                   reader_writer: ImageIO | None = None, file_ending: str | None = None,
                                   num_processes: int = 2, progress: bool = False) -> list[Path]:
    """Postprocess every segmentation of ``input_folder`` into ``output_folder`` (reference §8.4 step 5).

    Parameters
    ----------
    input_folder : folder of ``CASE{file_ending}`` segmentations; never written to
    output_folder : created if needed; must differ from ``input_folder``. Gets the
        postprocessed files under the same names, plus copies of the input's ``plans.json`` and
        ``dataset.json`` if present
    pp_json : a ``postprocessing.json`` path, its dict, or a list of :class:`PostprocessingStep`
    dataset_json, plans : dicts or files; default ``input_folder/{dataset,plans}.json`` (see :func:`resolve_io`)
    reader_writer, file_ending : override what the JSON files would give
    num_processes : worker processes

    Returns
    -------
    the written files, sorted by name

    Raises
    ------
    PnnunetError : output == input, no segmentations, bad recipe
    """
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if not input_folder.is_dir():
        raise DatasetError(input_folder, "input folder does not exist", "check the path (-i)")
    check_distinct_folders(input_folder, output_folder)
    if isinstance(pp_json, dict):
        steps = steps_from_json(pp_json)
    elif isinstance(pp_json, (str, Path)):
        steps = load_postprocessing(pp_json)
    else:
        steps = list(pp_json)
    rw, ending = resolve_io(input_folder, dataset_json, plans, reader_writer, file_ending)
    files = segmentation_files(input_folder, ending)
    if not files:
        raise DatasetError(input_folder, f"contains no segmentations ending in {ending}",
                           "check the folder (-i) and the file ending in dataset.json")
    output_folder.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "dataset.json"):
        if (input_folder / name).is_file():
            with atomic_path(output_folder / name) as tmp:
                shutil.copyfile(input_folder / name, tmp)
    jobs = [(input_folder / f, output_folder / f, rw, steps) for f in files]
    written = map_in_pool(postprocess_file, jobs, num_processes, progress, desc="postprocessing")
    log.info("postprocessed %d files (%d step(s)) into %s", len(written), len(steps), output_folder)
    return written
