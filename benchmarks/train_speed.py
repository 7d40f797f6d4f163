"""Seconds per training iteration on CPU, pnnunet beside upstream nnU-Net v2, in one run.

Both tools train the same plan configuration (default: upstream's Hippocampus 3d_fullres plan,
batch 8, patch 40×56×40, 4 stages, deep supervision, DC+CE, SGD nesterov, clip 12) on the same
random batch (written once to an .npz), each in its own process, alternating tools round by round.
Each process does ``--warmup`` untimed and ``--iterations`` timed iterations; the table gives the
median over all timed iterations of all rounds and the peak RSS of the process tree (50 ms samples,
data-loading workers included), from benchmarks/measure.py.

pnnunet modes: ``eager`` (stock Paddle dynamic graph), ``onednn`` (convolutions through oneDNN,
pnnunet.runtime.onednn.layers.accelerate_convolutions, float32), ``onednn-bf16`` (the same in
bfloat16 mixed precision, ``pnnunet_train --bf16``; needs a CPU with native bfloat16), and
``onednn+loader``: onednn with batches
from ``make_batch_iterators`` (real preprocessed data, augmentation in ``--workers`` background
processes) instead of the pre-made batch; it also reports how long each iteration waited for data;
every pnnunet mode runs its iterations under the trainer's CPU heap policy (``heap.TrainingHeap``: freed
memory returned to the kernel, or kept from the second step on when the process is small enough),
``--heap glibc`` under glibc's defaults instead (pnnunet before that policy).
Every pnnunet mode records the training process's minor / major page faults per iteration (getrusage).
pnnunet modes also count the convolution FLOPs of one step (forward 2·C_in·C_out·k·output voxels per
convolution, backward-data and backward-weights as much again each; the first layer has no
backward-data) and report the achieved convolution GFLOP/s (FLOPs / median s per iteration).

    /work/venvs/pn/bin/python benchmarks/train_speed.py --preprocessed <pnnunet_preprocessed>/Dataset004_Hippocampus

Upstream runs under ``--upstream_python`` (its own venv) via benchmarks/upstream/train_speed_upstream.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import run_measured

DEFAULT_PLANS = Path("/work/shared/reference/upstream_hippocampus_220/nnUNetPlans.json")
DEFAULT_UPSTREAM_PYTHON = Path("/work/venvs/upstream/bin/python")
MODES = ("upstream", "eager", "onednn", "onednn-bf16", "onednn+loader")


# ---- batch shared by both tools -------------------------------------------------------------


def make_batch(plans_path: Path, configuration: str, batch_size: int | None, num_classes: int, seed: int,
               out: Path) -> tuple[int, list[int]]:
    """Write ``data`` (B, 1, *patch) float32 and ``target_<i>`` int16 DS targets to ``out``."""
    from pnnunet.training.deep_supervision import downsample_seg_for_ds, ds_scales

    cfg = json.loads(plans_path.read_text())["configurations"][configuration]
    bs = int(batch_size or cfg["batch_size"])
    patch = [int(p) for p in cfg["patch_size"]]
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((bs, 1, *patch)).astype(np.float32)
    seg = rng.integers(0, num_classes, (bs, 1, *patch)).astype(np.int16)
    targets = downsample_seg_for_ds(seg, ds_scales(cfg["architecture"]["arch_kwargs"]["strides"]))
    np.savez(out, data=data, **{f"target_{i}": np.ascontiguousarray(t) for i, t in enumerate(targets)})
    return bs, patch


# ---- pnnunet worker (runs in its own process) -----------------------------------------------


def _real_batches(preprocessed: Path, configuration: str, batch_size: int, workers: int, seed: int):
    from pnnunet.plans import ConfigurationPlan, load_plans
    from pnnunet.preprocessing.storage import list_cases
    from pnnunet.training.augmentation import make_batch_iterators

    plans = load_plans(preprocessed / "pnnunetPlans.json")
    plan = ConfigurationPlan.from_plans(plans, configuration, preprocessed / "pnnunetPlans.json")
    folder = preprocessed / plan.data_identifier
    ids = list_cases(folder)
    train_iter, val_iter = make_batch_iterators(folder, plan, ids, ids[:1], workers, seed=seed,
                                                batch_size=batch_size)
    return train_iter, val_iter, list(plan.patch_size)


def pnnunet_worker(a: argparse.Namespace) -> None:
    """Time pnnunet training iterations exactly as ``Trainer._build`` / ``Trainer._train_step`` do them."""
    import paddle

    from pnnunet.heap import TrainingHeap
    from pnnunet.training.deep_supervision import ds_weights
    from pnnunet.runtime.architectures import build_network
    from pnnunet.runtime.device import set_cpu_threads
    from pnnunet.training.loss import DCandCELoss, DeepSupervisionLoss

    paddle.set_device("cpu")
    set_cpu_threads(a.threads)
    paddle.seed(a.seed)
    cfg = json.loads(Path(a.plans).read_text())["configurations"][a.configuration]
    npz = np.load(a.batch)
    fixed = {"data": npz["data"], "target": [npz[f"target_{i}"] for i in range(len(npz.files) - 1)]}
    network = build_network(cfg, fixed["data"].shape[1], a.num_classes, deep_supervision=True)
    n_fast = 0
    conv_flops = count_conv_flops(network, fixed["data"].shape)
    if a.mode.startswith("onednn"):
        from pnnunet.runtime.onednn.layers import accelerate_convolutions
        from pnnunet.runtime.onednn.primitives import bf16_supported

        low = "bf16" if a.mode == "onednn-bf16" else "f32"
        if low == "bf16" and not bf16_supported():
            raise SystemExit("onednn-bf16: this CPU has no native bfloat16 convolutions")
        n_fast = accelerate_convolutions(network, inference_precision=low, training_precision=low)
        if n_fast == 0:
            raise SystemExit("oneDNN is not available in this Paddle build")
    optimizer = paddle.optimizer.Momentum(
        learning_rate=0.01, momentum=0.99, use_nesterov=True, weight_decay=paddle.regularizer.L2Decay(3e-5),
        parameters=network.parameters(), grad_clip=paddle.nn.ClipGradByGlobalNorm(12.0))
    loss_fn = DeepSupervisionLoss(DCandCELoss(batch_dice=cfg["batch_dice"]), ds_weights(len(cfg["architecture"]
                                                                                             ["arch_kwargs"]["strides"])))
    iters = None
    if a.mode == "onednn+loader":
        iters = _real_batches(Path(a.preprocessed), a.configuration, fixed["data"].shape[0], a.workers, a.seed)
        if iters[2] != list(fixed["data"].shape[2:]):
            raise SystemExit(f"preprocessed plan patch {iters[2]} differs from {list(fixed['data'].shape[2:])}")
    times, waits, losses, minflt, majflt = [], [], [], [], []
    heap = TrainingHeap() if a.heap == "trainer" else None
    policy = None
    try:
        if heap is not None:
            heap.__enter__()
        for _ in range(a.warmup + a.iterations):
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            batch = next(iters[0]) if iters else fixed
            waits.append(time.perf_counter() - t0)
            data = paddle.to_tensor(batch["data"])
            targets = [paddle.to_tensor(np.asarray(t, dtype=np.int64)) for t in batch["target"]]
            optimizer.clear_grad()
            loss = loss_fn(network(data), targets)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.numpy()))
            if heap is not None:
                del data, targets, loss  # as Trainer._forward_backward_step before its heap.after_step()
                if heap.after_step():
                    policy = f"{heap.decision} ({heap.reason})"
            times.append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            minflt.append(r1.ru_minflt - r0.ru_minflt)
            majflt.append(r1.ru_majflt - r0.ru_majflt)
    finally:
        if heap is not None:
            heap.__exit__(None, None, None)
        if iters:
            iters[0].close()
            iters[1].close()
    result = {"tool": "pnnunet", "mode": a.mode, "paddle": paddle.__version__, "threads": a.threads,
              "onednn_layers": n_fast, "batch_shape": list(fixed["data"].shape), "conv_flops": conv_flops,
              "n_parameters": int(sum(int(np.prod(p.shape)) for p in network.parameters())),
              "warmup": a.warmup, "times": times[a.warmup:], "warmup_times": times[:a.warmup],
              "data_wait": waits[a.warmup:], "losses": losses,
              "minor_faults": minflt[a.warmup:], "major_faults": majflt[a.warmup:],
              "heap": a.heap, "heap_policy": policy}
    Path(a.out).write_text(json.dumps(result, indent=1))


# ---- driver ---------------------------------------------------------------------------------


def peak_worker(a: argparse.Namespace) -> None:
    """The machine's convolution peak: best GFLOP/s of a large 3D convolution (64 -> 64 channels, 3^3,
    batch 8 of 24^3) through oneDNN, forward, float32 and bfloat16, ``--threads`` threads."""
    import paddle

    from pnnunet.runtime.device import set_cpu_threads
    from pnnunet.runtime.onednn.layers import onednn_conv_inference
    from pnnunet.runtime.onednn.primitives import bf16_supported

    paddle.set_device("cpu")
    set_cpu_threads(a.threads)
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((8, 64, 24, 24, 24)).astype(np.float32))
    w = paddle.to_tensor(rng.standard_normal((64, 64, 3, 3, 3)).astype(np.float32) * 0.05)
    flops = 2 * 64 * 64 * 27 * 8 * 24 ** 3
    result = {"tool": "peak", "threads": a.threads, "flops": flops}
    for precision in ("f32", "bf16") if bf16_supported() else ("f32",):
        times = []
        for _ in range(a.warmup + a.iterations):
            t0 = time.perf_counter()
            onednn_conv_inference(x, w, None, [1] * 3, [1] * 3, precision=precision)
            times.append(time.perf_counter() - t0)
        result[f"{precision}_gflops"] = flops / 1e9 / min(times[a.warmup:])
    Path(a.out).write_text(json.dumps(result, indent=1))


def count_conv_flops(network, data_shape) -> int:
    """Convolution FLOPs of one training step (forward, backward-data, backward-weights) of ``network``
    on a batch of ``data_shape``, from the layers' output shapes in one no-grad forward."""
    import paddle

    shapes, hooks = [], []
    kinds = (paddle.nn.Conv2D, paddle.nn.Conv3D, paddle.nn.Conv2DTranspose, paddle.nn.Conv3DTranspose)
    for layer in network.sublayers():
        if isinstance(layer, kinds):
            hooks.append(layer.register_forward_post_hook(
                lambda lyr, inp, out: shapes.append((lyr, list(inp[0].shape), list(out.shape)))))
    with paddle.no_grad():
        network(paddle.zeros(list(data_shape), dtype="float32"))
    for h in hooks:
        h.remove()
    total = 0
    for i, (layer, x_shape, y_shape) in enumerate(shapes):
        w = layer.weight.shape  # conv [out, in, *k], transposed [in, out, *k]: the same product
        macs = int(np.prod(w))
        transposed = isinstance(layer, (paddle.nn.Conv2DTranspose, paddle.nn.Conv3DTranspose))
        # a transposed convolution's MACs scale with its input voxels, a convolution's with its output's
        voxels = int(np.prod(x_shape[2:] if transposed else y_shape[2:])) * x_shape[0]
        forward = 2 * macs * voxels
        total += forward * (2 if i == 0 else 3)  # the input layer needs no input gradient
    return total


def _command(mode: str, a: argparse.Namespace, batch: Path, out: Path) -> list[str]:
    common = ["--plans", str(a.plans), "--configuration", a.configuration, "--batch", str(batch),
              "--num_classes", str(a.num_classes), "--threads", str(a.threads), "--seed", str(a.seed),
              "--out", str(out)]
    warmup, iterations = str(a.warmup), str(a.eager_iterations if mode == "eager" else a.iterations)
    if mode == "upstream":
        return [str(a.upstream_python), str(HERE / "upstream" / "train_speed_upstream.py"), *common,
                "--warmup", warmup, "--iterations", iterations]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", mode, *common,
           "--warmup", warmup, "--iterations", iterations, "--heap", a.heap]
    if mode == "onednn+loader":
        cmd += ["--preprocessed", str(a.preprocessed), "--workers", str(a.workers)]
    return cmd


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for mode, results in runs.items():
        times = [t for r in results for t in r["times"]]
        waits = [t for r in results for t in r.get("data_wait", [])]
        flops = results[0].get("conv_flops")
        out[mode] = {"median_s": statistics.median(times), "min_s": min(times), "n": len(times),
                     "conv_gflop_per_step": flops / 1e9 if flops else None,
                     "conv_gflops_per_s": flops / 1e9 / statistics.median(times) if flops else None,
                     "round_medians_s": [statistics.median(r["times"]) for r in results],
                     "peak_rss_gib": max(r["peak_rss_bytes"] for r in results) / 2**30,
                     "median_data_wait_s": statistics.median(waits) if waits else None}
        faults = [f for r in results for f in r.get("minor_faults", [])]
        if faults:
            out[mode]["median_minor_faults"] = statistics.median(faults)
            out[mode]["median_major_faults"] = statistics.median(f for r in results for f in r["major_faults"])
    if "upstream" in out:
        for mode, s in out.items():
            s["ratio_to_upstream"] = s["median_s"] / out["upstream"]["median_s"]
    return out


def table(summary: dict[str, dict]) -> str:
    lines = [("| tool / mode | median s/iter | min | n | per-round medians | x upstream | peak RSS GiB | data wait "
              "| conv GFLOP/step | conv GFLOP/s | minor faults/iter |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, s in summary.items():
        wait = "" if s["median_data_wait_s"] is None else f"{s['median_data_wait_s']:.3f}"
        rounds = ", ".join(f"{v:.2f}" for v in s["round_medians_s"])
        gflop = "" if s.get("conv_gflop_per_step") is None else f"{s['conv_gflop_per_step']:.0f}"
        rate = "" if s.get("conv_gflops_per_s") is None else f"{s['conv_gflops_per_s']:.0f}"
        lines.append(f"| {mode} | {s['median_s']:.2f} | {s['min_s']:.2f} | {s['n']} | {rounds} | "
                     f"{s.get('ratio_to_upstream', float('nan')):.2f} | {s['peak_rss_gib']:.2f} | {wait} "
                     f"| {gflop} | {rate} | {s.get('median_minor_faults', '')} |")
    return "\n".join(lines)


def driver(a: argparse.Namespace) -> None:
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    if "onednn+loader" in modes and not a.preprocessed:
        raise SystemExit("onednn+loader needs --preprocessed <pnnunet_preprocessed>/DatasetXXX_Name")
    work = Path(tempfile.mkdtemp(prefix="train_speed_"))
    batch = work / "batch.npz"
    bs, patch = make_batch(Path(a.plans), a.configuration, a.batch_size, a.num_classes, a.seed, batch)
    print(f"batch {bs} x 1 x {patch}, {a.threads} threads, warmup {a.warmup}, timed {a.iterations} "
          f"(eager {a.eager_iterations}), {a.rounds} round(s); logs in {work}", flush=True)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    env = dict(os.environ)
    for r in range(a.rounds):
        order = modes if r % 2 == 0 else modes[::-1]
        for mode in order:
            out = work / f"{mode}_{r}.json"
            res = run_measured(_command(mode, a, batch, out), env=env, log_file=work / f"{mode}_{r}.log")
            if res["returncode"] != 0:
                raise SystemExit(f"{mode} failed (exit {res['returncode']}), see {work / f'{mode}_{r}.log'}")
            result = json.loads(out.read_text())
            result.update(peak_rss_bytes=res["peak_rss_bytes"], wall_s=res["wall_s"],
                          loadavg=os.getloadavg())
            runs[mode].append(result)
            faults = (f", {statistics.median(result['minor_faults']):.0f} minor faults/iter"
                      if result.get("minor_faults") else "")
            if result.get("heap_policy"):
                faults += f", heap {result['heap_policy']}"
            print(f"round {r} {mode}: median {statistics.median(result['times']):.2f} s/iter{faults}, "
                  f"peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB, load {os.getloadavg()[0]:.1f}", flush=True)
    summary = summarize(runs)
    print(table(summary))
    if a.peak:
        out = work / "peak.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", "peak", "--threads",
               str(a.threads), "--warmup", "2", "--iterations", "8", "--out", str(out)]
        if run_measured(cmd, env=env, log_file=work / "peak.log")["returncode"] == 0:
            peak = json.loads(out.read_text())
            summary["peak"] = peak
            for key in ("f32_gflops", "bf16_gflops"):
                if key in peak:
                    print(f"convolution peak {key.split('_')[0]}: {peak[key]:.0f} GFLOP/s (64->64 3^3 conv, "
                          f"{a.threads} threads)")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                           "summary": summary, "runs": runs}, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plans", default=str(DEFAULT_PLANS), help="plans JSON (upstream or pnnunet)")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--batch_size", type=int, default=None, help="default: the plan's")
    p.add_argument("--num_classes", type=int, default=3, help="output channels (labels incl. background)")
    p.add_argument("--modes", default="upstream,onednn,onednn-bf16", help=f"comma-separated, from {MODES}")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--eager_iterations", type=int, default=3, help="timed iterations of the slow eager mode")
    p.add_argument("--rounds", type=int, default=1, help="rounds over all modes, order reversed every round")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for both tools")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preprocessed", default=None, help="pnnunet preprocessed dataset dir (onednn+loader)")
    p.add_argument("--workers", type=int, default=2, help="augmentation worker processes (onednn+loader)")
    p.add_argument("--heap", choices=("trainer", "glibc"), default="trainer",
                   help="pnnunet modes: the trainer's CPU heap policy (default) or glibc's defaults")
    p.add_argument("--upstream_python", default=str(DEFAULT_UPSTREAM_PYTHON))
    p.add_argument("--out", default=None, help="write all results as JSON here")
    p.add_argument("--peak", action="store_true", help="also measure the machine's float32 / bfloat16 "
                                                       "convolution GFLOP/s (a large oneDNN 3D convolution)")
    # worker-only
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="onednn", help=argparse.SUPPRESS)
    p.add_argument("--batch", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        peak_worker(a) if a.mode == "peak" else pnnunet_worker(a)
    else:
        driver(a)


if __name__ == "__main__":
    main()
