"""One rank of the data-parallel equivalence test (tests/training/test_ddp_equivalence.py).

usage: python -m tests.training.ddp_worker OUTDIR STEPS
Builds the real Trainer (network, loss, optimizer, DataParallel) of the tiny plan, with and without
batch Dice, runs STEPS steps on this rank's slice of fixed global batches and saves the parameters
and losses to OUTDIR/rank{r}_bd{0,1}.npz / .json (one launch for both: process start-up dominates).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import paddle

from pnnunet.runtime import distributed as dist
from tests.training.synthetic import fixed_batches, make_trainer, rank_slice

GLOBAL_BATCH = 4


def run(outdir: Path, steps: int, batch_dice: bool, ctx: dist.DistContext) -> dict:
    with paddle.utils.unique_name.guard():
        paddle.seed(1234)
        trainer = make_trainer(outdir, dist=ctx, batch_size=GLOBAL_BATCH, batch_dice=batch_dice)
        trainer.build()
        sizes = dist.rank_batch_sizes(GLOBAL_BATCH, ctx.world_size)
        losses = [trainer.train_step(rank_slice(b, sizes, ctx.rank)) for b in fixed_batches(steps, GLOBAL_BATCH)]
        params = {k: v.numpy() for k, v in trainer.network.state_dict().items()}
    return {"losses": losses, "params": params, "model_is_data_parallel": type(trainer.model).__name__}


def main() -> int:
    outdir, steps = Path(sys.argv[1]), int(sys.argv[2])
    ctx = dist.DistContext.from_env()
    dist.tie_to_launcher()
    paddle.set_device("cpu")
    dist.init_process_group(ctx)
    for batch_dice in (True, False):
        result = run(outdir, steps, batch_dice, ctx)
        stem = f"rank{ctx.rank}_bd{int(batch_dice)}"
        np.savez(outdir / f"{stem}.npz", **result["params"])
        (outdir / f"{stem}.json").write_text(json.dumps({"losses": result["losses"],
                                                         "model": result["model_is_data_parallel"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
