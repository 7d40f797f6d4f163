"""Cross-validation splits against upstream nnU-Net v2 (§5.9)."""

import json

import pytest

from pnnunet.errors import DatasetError, PnnunetError
from pnnunet.training.splits import get_fold, load_or_create_splits, make_splits
from tests.conftest import UPSTREAM_HIPPO, require

# MSD Task02_Heart training identifiers (20 cases, la_003 … la_030).
HEART_IDS = ["la_%03d" % i for i in (3, 4, 5, 7, 9, 10, 11, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 26, 29, 30)]
# Fold 0 is Appendix B's vector; folds 1-4 and the 80:20 fallbacks come from upstream's
# nnunetv2.utilities.crossval_split.generate_crossval_split(HEART_IDS, seed=12345, n_splits=5) and
# nnUNetTrainer.do_split's RandomState(12345 + fold) rule, run in the upstream venv (upstream_splits.py).
HEART_VAL = [["la_007", "la_016", "la_021", "la_024"], ["la_003", "la_018", "la_020", "la_023"],
             ["la_011", "la_014", "la_019", "la_026"], ["la_017", "la_022", "la_029", "la_030"],
             ["la_004", "la_005", "la_009", "la_010"]]
HEART_FALLBACK = {
    5: (["la_010", "la_017", "la_011", "la_029", "la_007", "la_004", "la_009", "la_021", "la_023", "la_014", "la_003",
         "la_018", "la_016", "la_020", "la_022", "la_019"], ["la_005", "la_024", "la_026", "la_030"]),
    7: (["la_011", "la_005", "la_009", "la_003", "la_020", "la_021", "la_030", "la_014", "la_017", "la_023", "la_029",
         "la_026", "la_016", "la_024", "la_019", "la_004"], ["la_007", "la_010", "la_018", "la_022"]),
}


def test_heart_split_matches_upstream():
    splits = make_splits(list(reversed(HEART_IDS)))  # input order must not matter
    assert [s["val"] for s in splits] == HEART_VAL
    for s in splits:
        assert s["train"] == [c for c in HEART_IDS if c not in s["val"]]


def test_hippocampus_220_split_equals_upstream_file():
    reference = json.loads((require(UPSTREAM_HIPPO) / "splits_final.json").read_text())
    # the 220 case ids (each is in exactly one validation set), in an order unlike the file's
    case_ids = sorted((c for s in reference for c in s["val"]), key=lambda c: c[::-1])
    assert len(case_ids) == len(set(case_ids)) == 220
    assert len(case_ids) == 220
    assert make_splits(case_ids) == reference


def test_load_or_create_writes_then_respects_existing(tmp_path):
    splits = load_or_create_splits(tmp_path, HEART_IDS)
    assert json.loads((tmp_path / "splits_final.json").read_text()) == splits
    custom = [{"train": HEART_IDS[:10], "val": HEART_IDS[10:]}, {"train": HEART_IDS[10:], "val": HEART_IDS[:10]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(custom))
    assert load_or_create_splits(tmp_path, HEART_IDS) == custom
    assert not [p for p in tmp_path.iterdir() if p.name != "splits_final.json"]  # no temp files left


@pytest.mark.parametrize("content, match", [
    ([], "non-empty list"),
    ([{"train": ["la_003"]}], "fold 0"),
    ([{"train": ["la_003"], "val": ["la_999"]}], "la_999"),
])
def test_bad_existing_split_file_names_the_file(tmp_path, content, match):
    (tmp_path / "splits_final.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=match) as err:
        load_or_create_splits(tmp_path, HEART_IDS)
    assert err.value.path == tmp_path / "splits_final.json"


def test_get_fold_index_all_and_fallback():
    splits = make_splits(HEART_IDS)
    assert get_fold(splits, 0, HEART_IDS)[1] == HEART_VAL[0]
    assert get_fold(splits, "3", HEART_IDS)[1] == HEART_VAL[3]
    assert get_fold(splits, "all", HEART_IDS) == (HEART_IDS, HEART_IDS)
    for fold, expected in HEART_FALLBACK.items():
        assert get_fold(splits, fold, HEART_IDS) == expected


def test_errors():
    with pytest.raises(PnnunetError):
        make_splits(["a", "b", "c"])
    with pytest.raises(PnnunetError):
        get_fold(make_splits(HEART_IDS), -1, HEART_IDS)
    with pytest.raises(PnnunetError):
        get_fold(make_splits(HEART_IDS), "first", HEART_IDS)
