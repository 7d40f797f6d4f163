"""``pnnunet_train CONFIG FOLD``: train one fold, then validate it (reference §5, §9.2)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from pnnunet.cli.common import MarkedFormatter, add_dataset_arg, get_roots, run_cli
from pnnunet.dataset.resolve import resolve_dataset
from pnnunet.defaults import DEFAULT_PLANS, DEFAULT_STEP_SIZE, DEFAULT_TRAINER, model_dir_name, parse_fold
from pnnunet.errors import PnnunetError
from pnnunet.fileio import load_json
from pnnunet.inference.sliding_window import check_step_size
from pnnunet.locks import fold_lock, hold_lock
from pnnunet.paths import env_int
from pnnunet.plans import load_plans, resolve_configuration
from pnnunet.runtime import distributed as dist
from pnnunet.runtime.device import gpu_count, import_paddle, parse_device, pick_device, set_cpu_threads
from pnnunet.training.config import make_train_config
from pnnunet.runtime.checkpoints import latest_existing
from pnnunet.training.pretrained import load_pretrained_weights

log = logging.getLogger("pnnunet")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pnnunet_train", description="Train one fold of a configuration, then run "
                                                                  "the final validation of that fold.")
    p.add_argument("configuration", help="2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres or a custom one in the plans")
    p.add_argument("fold", help="0-4, or 'all' (train on all cases)")
    add_dataset_arg(p)
    p.add_argument("-tr", default=DEFAULT_TRAINER, help="trainer variant: pnnunetTrainer, pnnunetTrainer_<N>epochs[_NoMirroring], "
                   "pnnunetTrainerNoMirroring, pnnunetTrainer_onlyMirror01, pnnunetTrainerNoDeepSupervision, "
                   "pnnunetTrainerDiceCELoss_noSmooth, pnnunetTrainer_probabilisticOversampling[_033|_010] "
                   "(upstream's nnUNetTrainer... names are accepted too)")
    p.add_argument("-p", default=DEFAULT_PLANS, help=f"plans name (default {DEFAULT_PLANS})")
    p.add_argument("-device", default="auto",
                   help="auto (GPU when Paddle sees one), cpu, gpu, or gpu:K for card K (as numbered after "
                        "CUDA_VISIBLE_DEVICES)")
    p.add_argument("-num_gpus", "--num_gpus", type=int, default=1,
                   help="data-parallel training in N processes on this machine, one per GPU (NCCL); with -device "
                        "cpu, N CPU processes (gloo). The plan's batch is split over them. Under "
                        "'python -m paddle.distributed.launch' the processes come from the launcher instead")
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
                   help="initialise from this checkpoint, pnnunet's .pdparams or nnU-Net v2's .pth (all layers but the "
                        "segmentation heads; the network must be the same: move the source's plans first with "
                        "pnnunet_move_plans_between_datasets). Not re-applied when --c resumes a checkpoint")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--iterations_per_epoch", "--iterations-per-epoch", type=int, default=None)
    p.add_argument("--val_iterations_per_epoch", "--val-iterations-per-epoch", type=int, default=None)
    p.add_argument("--save_every", "--save-every", type=int, default=None, help="checkpoint_latest every N epochs")
    p.add_argument("--num_workers", "--num-workers", type=int, default=None,
                   help="augmentation worker processes (default: env pnnunet_n_proc_DA or min(2, cores)); 0 = in-process")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no_fast_cpu", "--no-fast-cpu", action="store_true",
                   help="CPU: use Paddle's own (slower) convolution kernels instead of oneDNN")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true",
                           help="CPU: insist on bfloat16 convolutions (float32 accumulation, weights, optimizer, norm "
                                "and loss), the default on CPUs with native bfloat16 (AVX512-BF16 or AMX); elsewhere "
                                "training stays float32 and says so. Recorded in the checkpoint and the log")
    precision.add_argument("--fp32", action="store_true",
                           help="CPU: train in float32 even where native bfloat16 would be used by default")
    p.add_argument("--no_pbar", "--no-pbar", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p


def _devices(args: argparse.Namespace, ctx: dist.DistContext) -> str:
    """The device of this process; checks -device against -num_gpus and the visible GPUs."""
    kind, index = parse_device(args.device)
    if args.num_gpus < 1:
        raise PnnunetError(f"-num_gpus {args.num_gpus}: must be at least 1")
    if not ctx.is_distributed:
        if args.num_gpus == 1:
            return pick_device(args.device)
        if index is not None:
            raise PnnunetError(f"-device {args.device} names one card, -num_gpus {args.num_gpus} asks for several\n"
                               f"  fix: choose the cards with CUDA_VISIBLE_DEVICES, e.g. CUDA_VISIBLE_DEVICES=0,1 "
                               f"pnnunet_train ... -num_gpus 2 (without -device gpu:K)")
        n = gpu_count()
        if kind == "cpu":
            return "cpu"
        if n < args.num_gpus:
            raise PnnunetError(f"-num_gpus {args.num_gpus}: Paddle sees {n} GPU(s)\n  fix: use -num_gpus {n} or "
                               f"fewer" + (" (check CUDA_VISIBLE_DEVICES)" if n else "; for data-parallel "
                                           "training in CPU processes add -device cpu") )
        return "gpu"
    # one rank of a data-parallel job
    if kind == "cpu" or (kind == "auto" and gpu_count() == 0):
        device = pick_device("cpu")
        set_cpu_threads(max(1, (os.cpu_count() or 1) // ctx.local_world_size))
        return device
    return pick_device(f"gpu:{dist.selected_gpu()}")


def _launch(args: argparse.Namespace, argv: list[str], device: str, global_batch: int) -> int:
    dist.rank_batch_sizes(global_batch, args.num_gpus)  # the batch must split: a clear error before any start
    log.info("pnnunet_train: %d data-parallel processes on %s", args.num_gpus,
             "GPUs (NCCL)" if device != "cpu" else "CPU (gloo)")
    return dist.launch_local([sys.executable, "-m", "pnnunet.cli.train", *argv], args.num_gpus, gpu=device != "cpu")


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    import_paddle()  # the install hint, before anything that needs Paddle is imported
    from pnnunet.training.trainer import Trainer, TrainingJob  # deferred: imports Paddle at load time

    ctx = dist.DistContext.from_env()
    if ctx.is_distributed:
        dist.tie_to_launcher()
    device = _devices(args, ctx)
    fold = parse_fold(args.fold)
    step_size = check_step_size(args.val_step_size, "--val_step_size")  # before training, not after it
    roots = get_roots()
    name = resolve_dataset(args.dataset, roots.raw, roots.preprocessed, dataset_id=args.dataset_id)
    pre_dir = roots.preprocessed / name
    plans = load_plans(pre_dir / f"{args.p}.json")
    resolve_configuration(plans, args.configuration, pre_dir / f"{args.p}.json")  # a typo named with the file
    dataset_json = load_json(pre_dir / "dataset.json")
    workers = args.num_workers if args.num_workers is not None else env_int("pnnunet_n_proc_DA",
                                                                            min(2, os.cpu_count() or 1))
    cfg = make_train_config(args.tr, num_epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                            val_iterations_per_epoch=args.val_iterations_per_epoch, save_every=args.save_every,
                            num_workers=workers, seed=args.seed,
                            fast_cpu_convolutions=False if args.no_fast_cpu else None,
                            cpu_bf16=True if args.bf16 else False if args.fp32 else None)
    model_dir = roots.results / name / model_dir_name(args.tr, args.p, args.configuration)
    job = TrainingJob(pre_dir, model_dir, plans, args.configuration, fold, dataset_json, args.tr, cfg,
                      device, progress_bar=not args.no_pbar, dist=ctx)
    trainer = Trainer(job)
    trainer.check_inputs()  # a clear error before the fold folder and its log are created
    if args.pretrained_weights is not None and not (args.val or args.val_best):
        _pretrained(args, job, trainer)
    if ctx.is_distributed:  # the launcher (or the user, around paddle.distributed.launch) holds the fold's lock
        return _train(args, argv, ctx, job, trainer, step_size)
    with hold_lock(fold_lock(job.fold_dir), f"fold {job.fold} of {job.model_dir.name}"):
        if args.num_gpus > 1:
            trainer.pretrained_weights = None  # checked; each launched process reads them again
            return _launch(args, argv, device, trainer.plan.batch_size)
        return _train(args, argv, ctx, job, trainer, step_size)


def _pretrained(args: argparse.Namespace, job, trainer) -> None:
    """Read --pretrained_weights and check them against the plan's network before anything is written;
    skipped when --c finds a checkpoint (the weights initialised the training that wrote it)."""
    if args.resume and latest_existing(job.fold_dir) is not None:
        log.info("--c: resuming %s; --pretrained_weights %s are not read again", job.fold_dir, args.pretrained_weights)
        return
    network_class = str((trainer.plan.raw.get("architecture") or {}).get("network_class_name", "PlainConvUNet"))
    trainer.check_pretrained(load_pretrained_weights(args.pretrained_weights, network_class))


def _train(args: argparse.Namespace, argv: list[str], ctx: dist.DistContext, job, trainer, step_size: float) -> int:
    """Train (unless --val) and validate one fold in this process."""
    job.fold_dir.mkdir(parents=True, exist_ok=True)
    if ctx.is_distributed:
        dist.init_process_group(ctx)
    handler = None
    if ctx.is_main:  # one training_log.txt, written by rank 0
        handler = add_training_log(job.fold_dir / "training_log.txt")
    else:
        log.setLevel(logging.WARNING)
    try:
        if not (args.val or args.val_best):
            trainer.fit(resume=args.resume)
        summary = trainer.final_validation("checkpoint_best" if args.val_best else "checkpoint_final",
                                           save_probabilities=args.npz, disable_tta=args.val_disable_tta,
                                           step_size=step_size)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
    if not ctx.is_main:
        return 0
    print(f"fold {job.fold}: mean foreground Dice {summary['foreground_mean']['Dice']:.4f} "
          f"({job.fold_dir / 'validation' / 'summary.json'})")
    return 0


class _TrainingLogHandler(logging.FileHandler):
    """A FileHandler that reports a failed write (a full disk) once, in one line, instead of logging's traceback
    per record; training goes on and its checkpoint write then stops it with the storage error."""

    _reported = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if not self._reported:
            self._reported = True
            print(f"pnnunet: warning: cannot write {self.baseFilename} ({sys.exc_info()[1]}); "
                  "the training log misses lines from here on", file=sys.stderr)


def add_training_log(path: Path) -> logging.Handler:
    """Copy the records of the ``pnnunet`` logger (the epoch lines among them) into ``path``.

    The handler goes on the ``pnnunet`` logger, whose level :func:`pnnunet.cli.common.setup_logging`
    sets, not on the root logger (importing Paddle 2.6 sets the root logger's level to WARNING).
    The caller removes it from ``log`` and closes it.
    """
    handler = _TrainingLogHandler(path)
    handler.setFormatter(MarkedFormatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda args: _run(args, argv), _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
