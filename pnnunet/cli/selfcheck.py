"""``pnnunet_selfcheck``: check this installation on this machine's GPU (or CPU) in a few minutes.

Paste its output into a bug report: versions, device, float16 autocast of 3D convolutions, a short
training with a falling loss, resume equality, static vs eager and reduced vs full precision
prediction, and the speed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import run_cli
from pnnunet.runtime.device import import_paddle


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_selfcheck",
                                description="Train and predict a tiny synthetic dataset on this machine's device and "
                                            "report what works (PASS / FAIL / SKIP per check).")
    p.add_argument("-device", default="auto", help="auto (GPU when Paddle sees one), gpu or cpu")
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for the synthetic dataset and models (default: a temporary folder, removed after)")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    import_paddle()  # the install hint, before anything that needs Paddle is imported
    from pnnunet.evaluation.selfcheck import run_selfcheck  # deferred: imports Paddle at load time

    t0 = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pnnunet_selfcheck_"))
    try:
        checks = run_selfcheck(work, args.device)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\npnnunet self-check")
    for check in checks:
        print(f"  {check}")
    failed = [c.name for c in checks if c.status == "FAIL"]
    print(f"{len(checks)} checks in {time.perf_counter() - t0:.0f} s: "
          + (f"FAILED: {', '.join(failed)}" if failed else "no failures"))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
