"""Batches of training patches from preprocessed cases (reference §5.2, Appendix A.2).

:class:`NNUNetPatchLoader` is a batchgenerators ``DataLoader``: the augmenters
(``SingleThreadedAugmenter`` / ``MultiThreadedAugmenter``) call it for batches and, in a worker
process, call :meth:`NNUNetPatchLoader.set_thread_id` first. Every batch has a global index (its position in
the stream the augmenter returns: worker ``t`` of ``n`` makes batches ``first_batch + t``, ``+ t + n``, ...,
which the augmenter reads round robin) and is drawn from a generator seeded with ``(seed, index)``; the index
travels with the batch (``batch_index``) so that the augmentation can be seeded the same way
(:class:`pnnunet.training.augmentation.PerBatchRandomState`). Batch ``k`` is therefore the same whether the
stream started at 0 or at ``k`` (a training resumed at an epoch boundary continues the uninterrupted run's
stream exactly) and whatever the number of workers.
Cases are opened lazily (Blosc2 ``.b2nd``: only the chunks a box covers are decompressed; ``.npy``:
memory maps); only the boxes are copied into memory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from batchgenerators.dataloading.data_loader import DataLoader

from pnnunet.parallel import single_thread_worker
from pnnunet.preprocessing.previous_stage import load_previous_stage_segmentation
from pnnunet.preprocessing.storage import case_folder, load_preprocessed_case
from pnnunet.training.sampling import crop_with_padding, forced_foreground_mask, patch_bbox

log = logging.getLogger(__name__)

IMAGE_PAD_VALUE = 0
SEG_PAD_VALUE = -1


def limit_worker_threads() -> None:
    """Limit BLAS / OpenMP pools of this process to one thread (augmentation workers, §5.2)."""

    single_thread_worker()


class NNUNetPatchLoader(DataLoader):
    """Infinite loader of patch batches with foreground oversampling (§5.2).

    Parameters
    ----------
    folder : folder of preprocessed cases (pnnunet's or upstream's, ``.b2nd`` or ``.npy``; see
        :mod:`pnnunet.preprocessing.storage`)
    case_ids : cases to draw from (uniformly, with replacement)
    batch_size : samples per batch
    crop_size : box size ``P0`` (enlarged patch for training, final patch for validation); 2 axes
        for 2D configurations, which crop one slice of the 3D volume
    final_patch : the network's patch ``P`` (same number of axes as ``crop_size``)
    oversample : fraction of forced-foreground samples (the last ones of each batch)
    probabilistic : instead, force each sample with probability ``oversample`` (upstream's
        ``probabilistic_oversampling``)
    seed : seeds the generator of every batch together with the batch's index
    first_batch : index of the first batch this loader makes (a resumed training: epoch x iterations)
    previous_stage_folder : cascade only: the previous stage's segmentations (``{CASE}.b2nd``) in this
        configuration's preprocessed grid (:mod:`pnnunet.preprocessing.previous_stage`), cropped with
        the same box and appended as seg channel 1

    Each batch is ``{'data': float32 (B, C, *crop_size), 'seg': int16 (B, 1 or 2, *crop_size),
    'keys': list of case ids, 'batch_index': int}``; outside the case, data is 0 and seg is -1.
    """

    def __init__(self, folder: Path | str, case_ids: Sequence[str], batch_size: int, crop_size: Sequence[int],
                 final_patch: Sequence[int], oversample: float = 0.33, seed: int = 0,
                 previous_stage_folder: Path | str | None = None, probabilistic: bool = False,
                 first_batch: int = 0):
        case_ids = list(case_ids)
        if not case_ids:
            raise ValueError(f"{folder}: no cases to load patches from")
        if len(crop_size) != len(final_patch) or len(crop_size) not in (2, 3):
            raise ValueError(f"crop_size {list(crop_size)} and final_patch {list(final_patch)} need 2 or 3 axes each")
        super().__init__(case_ids, batch_size, num_threads_in_multithreaded=1, seed_for_shuffle=None,
                         return_incomplete=False, shuffle=True, infinite=True)
        self.indices = case_ids  # batchgenerators' DataLoader requires it
        self.folder = case_folder(folder)  # a shared folder's pointer is followed once, here
        self.is_2d = len(crop_size) == 2
        # 2D: one slice of the 3D volume; the singleton axis is removed after cropping (§5.2)
        self.crop_size = ((1,) if self.is_2d else ()) + tuple(int(c) for c in crop_size)
        self.final_patch = ((1,) if self.is_2d else ()) + tuple(int(c) for c in final_patch)
        self.oversample = float(oversample)
        self.probabilistic = bool(probabilistic)
        self.seed = int(seed)
        self.previous_stage_folder = Path(previous_stage_folder) if previous_stage_folder is not None else None
        self.first_batch = int(first_batch)
        self.batches_made = 0  # by this process (worker)
        self.rng = np.random.default_rng([self.seed, self.first_batch])

    def set_workers(self, n: int) -> None:
        """Before the augmenter forks: ``n`` worker processes will share the stream (0 or 1: this process)."""
        self.number_of_threads_in_multithreaded = max(1, int(n))

    def set_thread_id(self, thread_id: int) -> None:
        """Called by the augmenter inside each worker process: its place in the stream, limit threads."""
        super().set_thread_id(thread_id)
        limit_worker_threads()

    def next_batch_index(self) -> int:
        return self.first_batch + self.thread_id + self.batches_made * self.number_of_threads_in_multithreaded

    def load_sample(self, case: str, forced_fg: bool) -> tuple[np.ndarray, np.ndarray]:
        """One box of ``case``: data float32 (C, *crop), seg int16 (1 or 2, *crop) (2D: slice axis removed)."""
        data, seg, props = load_preprocessed_case(self.folder, case, mmap=True)
        lb, ub = patch_bbox(data.shape[1:], self.crop_size, self.final_patch, forced_fg,
                            props.get("class_locations"), self.rng)
        bbox = list(zip(lb, ub))
        data_crop = crop_with_padding(data, bbox, IMAGE_PAD_VALUE, dtype=np.float32)
        seg_crop = crop_with_padding(seg, bbox, SEG_PAD_VALUE, dtype=np.int16)
        if self.previous_stage_folder is not None:
            prev = load_previous_stage_segmentation(self.previous_stage_folder, case, data.shape[1:])
            seg_crop = np.concatenate([seg_crop, crop_with_padding(prev, bbox, SEG_PAD_VALUE, dtype=np.int16)])
        if self.is_2d:
            data_crop, seg_crop = data_crop[:, 0], seg_crop[:, 0]
        return data_crop, seg_crop

    def generate_train_batch(self) -> dict:
        index = self.next_batch_index()
        self.batches_made += 1
        self.rng = np.random.default_rng([self.seed, index])
        keys = [str(k) for k in self.rng.choice(self.indices, self.batch_size, replace=True)]
        if self.probabilistic:
            forced = [bool(u < self.oversample) for u in self.rng.uniform(size=self.batch_size)]
        else:
            forced = forced_foreground_mask(self.batch_size, self.oversample)
        data_all = seg_all = None
        for j, case in enumerate(keys):
            data, seg = self.load_sample(case, forced[j])
            if data_all is None:
                data_all = np.empty((self.batch_size, *data.shape), dtype=np.float32)
                seg_all = np.empty((self.batch_size, *seg.shape), dtype=np.int16)
            if data.shape[0] != data_all.shape[1]:
                raise ValueError(f"{self.folder}: case {case} has {data.shape[0]} channels, "
                                 f"case {keys[0]} has {data_all.shape[1]}")
            data_all[j], seg_all[j] = data, seg
        return {"data": data_all, "seg": seg_all, "keys": keys, "batch_index": index}
