"""Raw datasets: dataset.json, labels, case discovery, integrity check, MSD/v1 conversion, ``-d`` resolution.

Reference: nnunet_behaviour.md §1 (layout, dataset.json, v1/MSD, regions/ignore) and Appendix E.
"""

from pnnunet.dataset.cases import get_inference_cases, get_training_cases
from pnnunet.dataset.dataset_json import is_msd_dataset_json, load_dataset_json
from pnnunet.dataset.integrity import verify_dataset_integrity
from pnnunet.dataset.labels import LabelInfo
from pnnunet.dataset.msd import convert_msd_dataset, import_dataset_folder, is_msd_folder
from pnnunet.dataset.resolve import available_datasets, resolve_dataset

__all__ = [
    "LabelInfo",
    "available_datasets",
    "convert_msd_dataset",
    "get_inference_cases",
    "get_training_cases",
    "import_dataset_folder",
    "is_msd_dataset_json",
    "is_msd_folder",
    "load_dataset_json",
    "resolve_dataset",
    "verify_dataset_integrity",
]
