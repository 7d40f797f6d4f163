"""Seeded cross-validation scenarios for comparing postprocessing selection with upstream nnU-Net.

Each scenario is a list of (reference, prediction) label maps of shape (6, 10, 10):
- ``blob``: label 1 block with label 2 either touching it or separate (random per case), plus 0-2
  random boxes of a random label (0, 1 or 2) pasted into the prediction;
- ``noise``: label 1 and 2 blocks touching, 6 % of the prediction's voxels set to random labels.
``UPSTREAM_SCENARIOS`` names the ones whose upstream ``postprocessing.json`` is stored in
``data/upstream_determine_postprocessing.json`` (see data/README.md).
"""

from __future__ import annotations

import numpy as np

SHAPE = (6, 10, 10)


def blob_cases(seed: int, n: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ref = np.zeros(SHAPE, dtype=np.uint8)
        ref[1:4, 1:5, 1:5] = 1
        if rng.random() < 0.5:
            ref[1:4, 5:7, 1:4] = 2
        else:
            ref[1:3, 7:9, 6:9] = 2
        pred = ref.copy()
        for _ in range(rng.integers(0, 3)):
            z, y, x = rng.integers(0, 5), rng.integers(0, 9), rng.integers(0, 9)
            dz, dy, dx = rng.integers(1, 3, size=3)
            pred[z:z + dz, y:y + dy, x:x + dx] = rng.integers(0, 3)
        out.append((ref, pred))
    return out


def noise_cases(seed: int, n: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ref = np.zeros(SHAPE, dtype=np.uint8)
        ref[1:4, 1:5, 1:5] = 1
        ref[2:4, 5:8, 2:5] = 2
        pred = ref.copy()
        noise = rng.random(pred.shape) < 0.06
        pred[noise] = rng.integers(0, 3, size=int(noise.sum()))
        out.append((ref, pred))
    return out


# name → (generator, seed, label mode "labels" or "regions")
UPSTREAM_SCENARIOS = {
    "blob_labels_0": (blob_cases, 0, "labels"),
    "blob_labels_1": (blob_cases, 1, "labels"),
    "blob_labels_3": (blob_cases, 3, "labels"),
    "blob_regions_1": (blob_cases, 1, "regions"),
    "blob_regions_4": (blob_cases, 4, "regions"),
    "noise_labels_0": (noise_cases, 0, "labels"),
    "noise_regions_100": (noise_cases, 100, "regions"),
}
