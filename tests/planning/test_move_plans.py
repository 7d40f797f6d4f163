"""pnnunet_move_plans_between_datasets: the plans upstream's own command writes (tests/data/upstream_move_plans),
and clear errors with nothing written for a missing dataset or plans file or a target file in the way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.upstream.make_move_plans_fixtures import CASES, SOURCE_PLANS, TARGETS, hippocampus_target, lay_out_inputs
from pnnunet.cli.move_plans_between_datasets import main
from tests.conftest import REPO

EXPECTED = REPO / "tests" / "data" / "upstream_move_plans"


@pytest.fixture
def roots(tmp_path, monkeypatch) -> Path:
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"pnnunet_{name}", str(tmp_path / name))
    lay_out_inputs(tmp_path / "raw", tmp_path / "preprocessed")  # the tree upstream's fixtures were made from
    return tmp_path


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_plans_equal_upstreams(roots, case, capsys):
    target, sp, tp = CASES[case]
    assert main(["-s", "4", "-t", target, "-sp", sp] + (["-tp", tp] if tp else [])) == 0
    written = roots / "preprocessed" / TARGETS[target] / f"{tp or sp}.json"
    expected = json.loads((EXPECTED / f"{case}.json").read_text())
    got = json.loads(written.read_text())
    assert got == expected
    assert json.dumps(got) == json.dumps(expected)  # key order too (upstream keeps the source's)
    # the target can be preprocessed next: its dataset.json is there
    assert (roots / "preprocessed" / TARGETS[target] / "dataset.json").is_file()
    assert f"pnnunet_preprocess -d {TARGETS[target]} -p {tp or sp}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["-s", "7", "-t", "10", "-sp", "nnUNetPlans"], "dataset '7' not found"),
    (["-s", "4", "-t", "10", "-sp", "nnUNetPlansX"], "source plans 'nnUNetPlansX' not found (plans there: "
                                                     "nnUNetPlans, nnUNetPlansTiny)"),
    (["-s", "4", "-t", "12", "-sp", "nnUNetPlans"], "dataset '12' not found"),
])
def test_missing_inputs_are_clear_errors_and_nothing_is_written(roots, argv, expected, capsys):
    before = _tree(roots)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert expected in err and "fix:" in err and "Traceback" not in err
    assert _tree(roots) == before


def test_source_only_in_raw_is_a_clear_error(roots, capsys):
    """A source dataset that was never planned has no plans to move."""
    hippocampus_target(roots / "raw" / "Dataset020_Unplanned")
    before = _tree(roots)
    assert main(["-s", "20", "-t", "10", "-sp", "nnUNetPlans"]) == 1
    err = capsys.readouterr().err
    assert "has no preprocessed folder" in err and "pnnunet_plan_experiment -d Dataset020_Unplanned" in err
    assert _tree(roots) == before


def test_existing_target_plans_are_kept_unless_overwrite(roots, capsys):
    target = roots / "preprocessed" / TARGETS["10"]
    target.mkdir(parents=True)
    own = target / "nnUNetPlans.json"
    own.write_text(json.dumps({"plans_name": "nnUNetPlans", "dataset_name": TARGETS["10"], "configurations": {}}))
    before = _tree(roots)
    argv = ["-s", "4", "-t", "10", "-sp", "nnUNetPlans"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{own}: exists with other content; not overwritten" in err and "--overwrite" in err
    assert _tree(roots) == before
    assert main(argv + ["--overwrite"]) == 0
    assert "replaced" in capsys.readouterr().out
    moved = own.read_bytes()
    assert json.loads(moved)["dataset_name"] == TARGETS["10"] and json.loads(moved)["configurations"]
    assert main(argv) == 0  # the same plans again: nothing to do, not an error
    assert "already holds these plans, unchanged" in capsys.readouterr().out
    assert own.read_bytes() == moved


def test_data_identifier_shared_with_another_plans_file_is_warned(roots, capsys):
    """Same -tp as -sp keeps upstream's identifiers (``nnUNetPlans_3d_fullres`` for the tiny plans), which the
    target's own nnUNetPlans use: preprocessing would replace their cases, so the command says so."""
    target = roots / "preprocessed" / TARGETS["10"]
    target.mkdir(parents=True)
    shutil.copyfile(SOURCE_PLANS["nnUNetPlans"], target / "nnUNetPlans.json")
    assert main(["-s", "4", "-t", "10", "-sp", "nnUNetPlansTiny"]) == 0
    out = capsys.readouterr().out
    assert "warning: data identifier(s) nnUNetPlans_2d, nnUNetPlans_3d_fullres are used by another plans file" in out
