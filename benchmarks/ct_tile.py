"""Seconds, page faults and peak RSS of one CT-sized tile through the network (issue 4 profiling).

The CT abdomen 3d_fullres network (tests/planning/expected/ct_abdomen_lowres, 6 stages, 15 outputs,
random weights) on one 64x160x192 patch, bf16 oneDNN convolutions as the predictor uses them on a CPU
with native bfloat16 (``--precision f32`` otherwise), ``--runs`` forward passes, with or without
:func:`pnnunet.heap.reuse_freed_memory`. Peak RSS is the process's ``ru_maxrss``.

    python benchmarks/ct_tile.py --heap reuse
    python benchmarks/ct_tile.py --heap default
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PLANS = HERE.parent / "tests" / "planning" / "expected" / "ct_abdomen_lowres" / "upstream_plans.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heap", choices=["reuse", "default"], default="reuse")
    p.add_argument("--precision", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()

    import paddle

    from pnnunet.heap import reuse_freed_memory
    from pnnunet.plans import resolve_configuration
    from pnnunet.training import fast_cpu
    from pnnunet.runtime.architectures import build_network
    from pnnunet.runtime.device import set_cpu_threads

    paddle.set_device("cpu")
    set_cpu_threads()
    cfg = resolve_configuration(json.loads(PLANS.read_text()), "3d_fullres")
    with paddle.utils.unique_name.guard():
        net = build_network(cfg, 1, 15, deep_supervision=False)
    net.eval()
    fast_cpu.accelerate_convolutions(net, inference_precision=args.precision)
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 1, *cfg["patch_size"]), dtype=np.float32))
    heap = reuse_freed_memory() if args.heap == "reuse" else contextlib.nullcontext()
    with paddle.no_grad(), heap:
        for _ in range(args.runs):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            net(x).numpy()
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            print(f"{args.precision} heap={args.heap}: {time.perf_counter() - t0:.2f} s, "
                  f"{r1.ru_minflt - r0.ru_minflt} minor page faults, system {r1.ru_stime - r0.ru_stime:.2f} s",
                  flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
