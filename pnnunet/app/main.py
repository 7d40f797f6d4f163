"""``pnnunet_app``: the local web platform (upload, segment, view, analyse) on http://127.0.0.1:8000."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pnnunet.app.demo import default_cache, prepare_demo, sample_images
from pnnunet.cli.common import get_roots, run_cli
from pnnunet.errors import PnnunetError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_app",
                                description="A local web platform: upload a NIfTI/NRRD/MHA image or a DICOM "
                                            "series, segment it with a trained model, view the labels over the "
                                            "image in 2D and 3D, read the statistics and download the results.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0 serves the network, "
                        "without any login: only on a trusted network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--models", type=Path, default=None,
                   help="results root with the trained models (default: $pnnunet_results)")
    p.add_argument("--jobs", type=Path, default=None,
                   help="folder for the jobs and their results (default: app_jobs beside the results root)")
    p.add_argument("--max_upload_mb", "--max-upload-mb", type=float, default=2048,
                   help="largest upload accepted, in MB (default 2048)")
    p.add_argument("--demo", action="store_true",
                   help="serve the bundled Hippocampus sample with the bundled pretrained model (without its "
                        "weights: a demo model trained once into --demo_cache)")
    p.add_argument("--demo_cache", "--demo-cache", type=Path, default=None,
                   help=f"where --demo keeps its model (default {default_cache()})")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from pnnunet.app.server import AppConfig, create_app
    except ImportError as e:
        raise PnnunetError(f"the web platform needs its extra packages ({e.name} is missing)\n"
                           "  fix: pip install \"pnnunet[app]\"") from None
    samples: tuple[Path, ...] = ()
    if args.demo:
        cache = (args.demo_cache or default_cache()).expanduser().resolve()
        models = prepare_demo(cache)
        jobs = args.jobs or cache / "app_jobs"
        samples = sample_images()
    else:
        models = args.models or get_roots().results
        jobs = args.jobs or models.expanduser().resolve().parent / "app_jobs"
    models, jobs = Path(models).expanduser().resolve(), Path(jobs).expanduser().resolve()
    if not models.is_dir():
        raise PnnunetError(f"--models {models}: no such folder\n  fix: pass the results root with the trained models "
                           "(DatasetXXX_Name/<Trainer>__<Plans>__<config>/fold_K), or use --demo")
    if args.max_upload_mb <= 0:
        raise PnnunetError("--max_upload_mb must be > 0")
    config = AppConfig(models, jobs, int(args.max_upload_mb * 2**20), samples)
    app = create_app(config)
    print(f"pnnunet_app: models from {models}, jobs in {jobs}", flush=True)
    print(f"pnnunet_app: open http://{args.host}:{args.port} in a browser (Ctrl-C stops the server)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
