"""Blosc2 chunk/block rule and filter choice against what upstream nnU-Net wrote (tests/data/upstream_preprocessed_b2nd)."""

import json

import blosc2
import pytest

from pnnunet.preprocessing.chunking import blosc2_blocks_and_chunks
from pnnunet.preprocessing.storage import select_filter
from tests.conftest import REPO

UPSTREAM = REPO / "tests" / "data" / "upstream_preprocessed_b2nd"
FILES = sorted((UPSTREAM / "nnUNetPlans_3d_fullres").glob("*.b2nd"))


def test_fixture_is_there():
    assert len(FILES) == 10


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_upstream_files_chunks_blocks_and_filter(path):
    patch = json.loads((UPSTREAM / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]["patch_size"]
    stored = blosc2.open(str(path), mode="r")
    assert blosc2_blocks_and_chunks(stored.shape, patch, stored.dtype.itemsize) == (stored.blocks, stored.chunks)
    assert select_filter(stored[...], stored.chunks, stored.blocks) == stored.schunk.cparams.filters[0]


@pytest.mark.parametrize("shape, patch, itemsize, blocks, chunks", [
    ((1, 35, 51, 35), (40, 56, 40), 4, (1, 32, 32, 32), (1, 35, 51, 35)),     # the fixture's README, case 001
    ((1, 38, 52, 36), (40, 56, 40), 2, (1, 38, 52, 32), (1, 38, 52, 36)),     # its seg of case 004
    ((1, 35, 51, 35), (56, 40), 4, (1, 1, 51, 35), (1, 1, 51, 35)),           # 2d folder, one slice per chunk
    ((1, 300, 512, 512), (128, 128, 128), 4, (1, 32, 32, 32), (1, 96, 128, 128)),
    ((1, 300, 512, 512), (128, 128, 128), 2, (1, 64, 32, 32), (1, 128, 192, 128)),
    ((1, 300, 512, 512), (512, 512), 4, (1, 1, 256, 128), (1, 1, 512, 512)),
    ((3, 300, 512, 512), None, 4, (1, 32, 32, 32), (1, 96, 128, 128)),         # no patch: (128, 128, 128)
])
def test_documented_examples(shape, patch, itemsize, blocks, chunks):
    assert blosc2_blocks_and_chunks(shape, patch, itemsize) == (blocks, chunks)


def test_limits_hold_on_odd_shapes():
    for shape, patch in [((1, 7, 1000, 3), (5, 160, 3)), ((2, 1, 1, 1), (1, 1, 1)), ((1, 517, 9, 260), (300, 9, 200))]:
        blocks, chunks = blosc2_blocks_and_chunks(shape, patch, 4)
        assert blocks[0] == chunks[0] == 1
        assert all(1 <= b <= c <= s for b, c, s in zip(blocks[1:], chunks[1:], shape[1:]))
        assert 4 * blocks[1] * blocks[2] * blocks[3] <= 128 * 1024
        assert 4 * chunks[1] * chunks[2] * chunks[3] <= 6 * 1024 * 1024
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        blosc2_blocks_and_chunks((10, 10, 10), (4, 4, 4), 4)
