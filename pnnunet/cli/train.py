"""``pnnunet_train CONFIG FOLD``: train one fold, then validate it (reference §5, §9.2)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import add_dataset_arg, get_roots, run_cli
from pnnunet.dataset.resolve import resolve_dataset
from pnnunet.defaults import DEFAULT_PLANS, DEFAULT_STEP_SIZE, DEFAULT_TRAINER, model_dir_name, parse_fold
from pnnunet.fileio import load_json
from pnnunet.inference.sliding_window import check_step_size
from pnnunet.paths import env_int
from pnnunet.plans import load_plans
from pnnunet.runtime.device import import_paddle, pick_device
from pnnunet.training.config import make_train_config
from pnnunet.training.pretrained import load_pretrained_weights

log = logging.getLogger("pnnunet")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_train", description="Train one fold of a configuration, then run "
                                                                  "the final validation of that fold.")
    p.add_argument("configuration", help="2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres or a custom one in the plans")
    p.add_argument("fold", help="0-4, or 'all' (train on all cases)")
    add_dataset_arg(p)
    p.add_argument("-tr", default=DEFAULT_TRAINER, help="trainer variant, e.g. pnnunetTrainer_5epochs "
                                                       "(upstream nnUNetTrainer_* names are accepted)")
    p.add_argument("-p", default=DEFAULT_PLANS, help=f"plans name (default {DEFAULT_PLANS})")
    p.add_argument("-device", default="auto", choices=["auto", "cpu", "gpu", "cuda"])
    p.add_argument("--npz", action="store_true", help="also save validation probabilities (needed for ensembling)")
    p.add_argument("--c", "--continue", dest="resume", action="store_true", help="resume from the last checkpoint")
    p.add_argument("--val", action="store_true", help="only run the final validation (needs checkpoint_final)")
    p.add_argument("--val_best", "--val-best", action="store_true", help="validate with checkpoint_best")
    p.add_argument("--val_disable_tta", "--val-disable-tta", action="store_true",
                   help="final validation without test-time mirroring (up to 8x faster on a CPU; not upstream's "
                        "validation, recorded in validation/validation_settings.json)")
    p.add_argument("--val_step_size", "--val-step-size", "-step_size", dest="val_step_size", type=float,
                   default=DEFAULT_STEP_SIZE, help=f"final validation tile step as a fraction of the patch "
                                                   f"(default {DEFAULT_STEP_SIZE}; 1 = fewer tiles, faster)")
    p.add_argument("--pretrained_weights", "-pretrained_weights", type=Path, default=None,
                   help="initialise from this checkpoint (all layers but the segmentation heads)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--iterations_per_epoch", "--iterations-per-epoch", type=int, default=None)
    p.add_argument("--val_iterations_per_epoch", "--val-iterations-per-epoch", type=int, default=None)
    p.add_argument("--save_every", "--save-every", type=int, default=None, help="checkpoint_latest every N epochs")
    p.add_argument("--num_workers", "--num-workers", type=int, default=None,
                   help="augmentation worker processes (default: env pnnunet_n_proc_DA or min(2, cores)); 0 = in-process")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no_fast_cpu", "--no-fast-cpu", action="store_true",
                   help="CPU: use Paddle's own (slower) convolution kernels instead of oneDNN")
    p.add_argument("--no_pbar", "--no-pbar", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    import_paddle()  # the install hint, before anything that needs Paddle is imported
    from pnnunet.training.trainer import Trainer, TrainingJob  # deferred: imports Paddle at load time

    fold = parse_fold(args.fold)
    step_size = check_step_size(args.val_step_size, "--val_step_size")  # before training, not after it
    roots = get_roots()
    name = resolve_dataset(args.dataset, roots.raw, roots.preprocessed, dataset_id=args.dataset_id)
    pre_dir = roots.preprocessed / name
    plans = load_plans(pre_dir / f"{args.p}.json")
    dataset_json = load_json(pre_dir / "dataset.json")
    workers = args.num_workers if args.num_workers is not None else env_int("pnnunet_n_proc_DA",
                                                                            min(2, os.cpu_count() or 1))
    cfg = make_train_config(args.tr, num_epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                            val_iterations_per_epoch=args.val_iterations_per_epoch, save_every=args.save_every,
                            num_workers=workers, seed=args.seed,
                            fast_cpu_convolutions=False if args.no_fast_cpu else None)
    device = pick_device(args.device)
    model_dir = roots.results / name / model_dir_name(args.tr, args.p, args.configuration)
    job = TrainingJob(pre_dir, model_dir, plans, args.configuration, fold, dataset_json, args.tr, cfg,
                      device, progress_bar=not args.no_pbar)
    trainer = Trainer(job)
    trainer.check_inputs()  # a clear error before the fold folder and its log are created
    job.fold_dir.mkdir(parents=True, exist_ok=True)
    handler = add_training_log(job.fold_dir / "training_log.txt")
    try:
        if not (args.val or args.val_best):
            if args.pretrained_weights is not None:
                trainer.pretrained_weights = load_pretrained_weights(args.pretrained_weights)
            trainer.fit(resume=args.resume)
        summary = trainer.final_validation("checkpoint_best" if args.val_best else "checkpoint_final",
                                           save_probabilities=args.npz, disable_tta=args.val_disable_tta,
                                           step_size=step_size)
    finally:
        log.removeHandler(handler)
        handler.close()
    print(f"fold {job.fold}: mean foreground Dice {summary['foreground_mean']['Dice']:.4f} "
          f"({job.fold_dir / 'validation' / 'summary.json'})")
    return 0


def add_training_log(path: Path) -> logging.Handler:
    """Copy the records of the ``pnnunet`` logger (the epoch lines among them) into ``path``.

    The handler goes on the ``pnnunet`` logger, whose level :func:`pnnunet.cli.common.setup_logging`
    sets, not on the root logger (importing Paddle 2.6 sets the root logger's level to WARNING).
    The caller removes it from ``log`` and closes it.
    """
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
