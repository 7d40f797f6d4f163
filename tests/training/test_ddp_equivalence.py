"""Data-parallel training (2 CPU processes, gloo) gives the parameters of one process on the global
batch: the project's own Trainer (PlainConvUNet, Dice+CE with deep supervision, Momentum with
global-norm clipping, oneDNN convolutions, paddle.DataParallel), fed fixed batches."""

import json
from pathlib import Path
import sys

import numpy as np
import pytest

from pnnunet.runtime import distributed as dist
from tests.conftest import REPO
from tests.training import ddp_worker

STEPS = 3


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp = pytest.MonkeyPatch()
    mp.chdir(REPO)  # the ranks run "python -m tests.training.ddp_worker"
    mp.setenv("OMP_NUM_THREADS", "1")
    try:
        code = dist.launch_local([sys.executable, "-m", "tests.training.ddp_worker", str(out), str(STEPS)], 2,
                                 gpu=False)
    finally:
        mp.undo()
    assert code == 0
    return out


@pytest.mark.parametrize("batch_dice", [True, False])
def test_two_ranks_equal_one_process_on_the_global_batch(two_rank_run, tmp_path, batch_dice):
    stems = [two_rank_run / f"rank{r}_bd{int(batch_dice)}" for r in range(2)]
    ranks = [dict(np.load(f"{s}.npz")) for s in stems]
    info = [json.loads(Path(f"{s}.json").read_text()) for s in stems]
    assert info[0]["model"] == "DataParallel"

    reference = ddp_worker.run(tmp_path, STEPS, batch_dice, dist.DistContext())
    ref = reference["params"]
    initial = ddp_worker.run(tmp_path, 0, batch_dice, dist.DistContext())["params"]
    assert set(ranks[0]) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(ranks[0][k], ranks[1][k])  # the ranks stay identical
        np.testing.assert_allclose(ranks[0][k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)  # summation order: seen 2.9e-6
    # the steps did something (else equality would be trivial), and more than the tolerance
    assert max(float(np.abs(ref[k] - initial[k]).max()) for k in ref) > 1e-3
    # the mean of the ranks' losses is the global-batch loss (CE mean over equal halves; Dice global)
    mean_losses = np.mean([info[0]["losses"], info[1]["losses"]], axis=0)
    np.testing.assert_allclose(mean_losses, reference["losses"], rtol=1e-5, atol=1e-6)
