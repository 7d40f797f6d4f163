"""Wall time and peak RAM for one synthetic CT-sized volume: pnnunet vs upstream nnU-Net v2 (issue 4).

One seeded synthetic CT volume (default 512 x 512 x 300 voxels, spacing 0.773 x 0.773 x 2.5 mm in
SimpleITK (x, y, z) order: already at the plan's target spacing, so resampling is (nearly) a no-op),
predicted with the 3d_fullres configuration of upstream's plans for a CT abdomen fingerprint
(``tests/planning/expected/ct_abdomen_lowres/upstream_plans.json``: patch 64 x 160 x 192, 6 stages,
the plan pnnunet's planner makes identically), 14 labels, one fold of random weights, TTA off,
``-npp 1 -nps 1``, CPU. Both tools run the same plan file; the tools alternate round by round. Each
run is a separate process measured by :func:`predict_speed.run_measured` (wall time of the whole
process; peak summed RSS / PSS of its process tree). The pnnunet run is ``predict_speed.py
--worker auto`` (Predictor with its default precision: bfloat16 convolutions on CPUs that have
them; ``pnnunet-fp32`` runs the float32 static graph), the upstream run ``upstream/predict_speed_upstream.py``
(nnUNetPredictor, step 0.5, gaussian, torch threads = cores). Results: a markdown table on stdout
and ``<work>/predict_ct_volume.json``.

    python benchmarks/predict_ct_volume.py --work /work/scratch/ctbench --rounds 1

``--shape X Y Z`` makes a smaller volume (e.g. fewer slices) when the full one takes too long.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predict_speed import _load, run_measured

FIXTURE = HERE.parent / "tests" / "planning" / "expected" / "ct_abdomen_lowres"
PLANS = FIXTURE / "upstream_plans.json"
DATASET_JSON = FIXTURE / "dataset.json"
CONFIGURATION = "3d_fullres"


# ---- set-up ---------------------------------------------------------------------------------------
def make_ct_volume(path: Path, shape_xyz: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
                   seed: int = 0) -> Path:
    """Write a synthetic HU-like CT volume: -1000 air, a soft-tissue body ellipse (40 +- 30 HU) with a
    brighter 'organ' blob and a bone-like ring. ``shape_xyz`` / ``spacing_xyz`` in SimpleITK (x, y, z)
    order; the array is (z, y, x) int16."""
    import SimpleITK as sitk

    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape_xyz
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    r = ((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.32 * ny)) ** 2
    body = r < 1.0
    ring = (r > 0.85) & body
    organ = ((x - 0.4 * nx) / (0.12 * nx)) ** 2 + ((y - 0.45 * ny) / (0.1 * ny)) ** 2 < 1.0
    vol = np.empty((nz, ny, nx), dtype=np.int16)
    for z in range(nz):
        sl = np.full((ny, nx), -1000.0, dtype=np.float32)
        sl[body] = 40.0 + 30.0 * rng.standard_normal(int(body.sum()), dtype=np.float32)
        sl[organ] += 60.0
        sl[ring] = 700.0 + 100.0 * rng.standard_normal(int(ring.sum()), dtype=np.float32)
        vol[z] = np.clip(sl, -1024, 3071).astype(np.int16)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("tmp_" + path.name)
    sitk.WriteImage(img, str(tmp), useCompression=True)
    tmp.replace(path)
    return path


def make_pnnunet_ct_model(model_dir: Path, plans_file: Path, dataset_json_file: Path, configuration: str) -> None:
    """A pnnunet model folder, fold 0 only, random weights (``paddle.seed(0)``), 1 input channel,
    as many outputs as the dataset.json has labels."""
    if (model_dir / "fold_0" / "checkpoint_final.pdparams").is_file():
        return
    import paddle

    from pnnunet.fileio import load_json, write_json_atomic
    from pnnunet.plans import resolve_configuration
    from pnnunet.runtime.architectures import build_network
    from pnnunet.runtime.checkpoints import save_checkpoint

    plans, dataset_json = load_json(plans_file), load_json(dataset_json_file)
    write_json_atomic(model_dir / "plans.json", plans)
    write_json_atomic(model_dir / "dataset.json", dataset_json)
    cfg = resolve_configuration(plans, configuration)
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        net = build_network(cfg, 1, len(dataset_json["labels"]), deep_supervision=False)
    save_checkpoint(model_dir / "fold_0" / "checkpoint_final.pdparams",
                    {"network_weights": net.state_dict(), "trainer_name": "pnnunetTrainer",
                     "init_args": {"plans": plans, "configuration": configuration, "fold": 0,
                                   "dataset_json": dataset_json},
                     "inference_allowed_mirroring_axes": [0, 1, 2]})


def _command(tool: str, args: argparse.Namespace, out: Path, result: Path) -> list[str]:
    common = ["-i", str(_input_dir(args)), "-o", str(out), "--result", str(result), "-npp", "1", "-nps", "1",
              "--disable_tta"]
    if tool == "upstream":
        return [args.upstream_python, str(HERE / "upstream" / "predict_speed_upstream.py"), "--plans", str(PLANS),
                "--dataset_json", str(DATASET_JSON), "--configuration", CONFIGURATION, "--model_dir",
                str(args.work / "upstream_model"), "--folds", "0", *common]
    worker = "static" if tool == "pnnunet-fp32" else "auto"
    return [sys.executable, str(HERE / "predict_speed.py"), "--worker", worker, "--model_dir",
            str(_pnnunet_model_dir(args)), "--n_folds", "1", *common]


def _pnnunet_model_dir(args: argparse.Namespace) -> Path:
    return args.work / "pnnunet_results" / "Dataset900_CTBench" / f"pnnunetTrainer__nnUNetPlans__{CONFIGURATION}"


def _input_dir(args: argparse.Namespace) -> Path:
    """One input folder per volume shape/spacing (so ``--shape`` never reuses another volume)."""
    x, y, z = args.shape
    return args.work / f"input_{x}x{y}x{z}_{'x'.join(f'{s:g}' for s in args.spacing)}"


def run(args: argparse.Namespace) -> list[dict]:
    args.work.mkdir(parents=True, exist_ok=True)
    make_ct_volume(_input_dir(args) / "CT_0000.nii.gz", tuple(args.shape), tuple(args.spacing), args.seed)
    if any(t.startswith("pnnunet") for t in args.tools):
        make_pnnunet_ct_model(_pnnunet_model_dir(args), PLANS, DATASET_JSON, CONFIGURATION)
    rows = []
    for rnd in range(args.rounds):
        for tool in (args.tools if rnd % 2 == 0 else args.tools[::-1]):
            out, result = args.work / f"out_{tool}", args.work / f"result_{tool}_{rnd}.json"
            log = args.work / f"log_{tool}_{rnd}.txt"
            load_before = _load()
            m = run_measured(_command(tool, args, out, result), log)
            if m["returncode"] != 0:
                print(f"round {rnd} {tool} failed (exit {m['returncode']}): see {log}", flush=True)
                continue
            r = json.loads(result.read_text())
            row = {"round": rnd, "tool": tool, "wall_s": m["wall_s"], "predict_s": r["predict_seconds"],
                   "load_s": r["load_seconds"], "peak_rss_gib": m["peak_rss_bytes"] / 2**30,
                   "peak_pss_gib": m["peak_pss_bytes"] / 2**30, "load_avg_before": load_before,
                   "load_avg_after": _load()}
            rows.append(row)
            print(f"round {rnd} {tool:8s}: wall {row['wall_s']:.1f} s (predict {row['predict_s']:.1f} s), peak RSS "
                  f"{row['peak_rss_gib']:.2f} GiB, PSS {row['peak_pss_gib']:.2f} GiB (load {load_before} -> "
                  f"{row['load_avg_after']})", flush=True)
    (args.work / "predict_ct_volume.json").write_text(json.dumps({"shape_xyz": args.shape, "spacing_xyz": args.spacing,
                                                                  "rows": rows}, indent=2))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| round | tool | wall s | predict s | peak RSS GiB | peak PSS GiB | load avg before |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['tool']} | {r['wall_s']:.1f} | {r['predict_s']:.1f} | {r['peak_rss_gib']:.2f} | "
              f"{r['peak_pss_gib']:.2f} | {r['load_avg_before']} |" for r in rows]
    walls = {t: min(r["wall_s"] for r in rows if r["tool"] == t) for t in {r["tool"] for r in rows}}
    if {"pnnunet", "upstream"} <= walls.keys():
        lines.append(f"\nwall-time ratio upstream / pnnunet (best round each): "
                     f"{walls['upstream'] / walls['pnnunet']:.2f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/work/scratch/ctbench"))
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, nargs=3, default=[0.773, 0.773, 2.5], metavar=("SX", "SY", "SZ"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tools", nargs="+", default=["pnnunet", "upstream"], choices=["pnnunet", "pnnunet-fp32", "upstream"],
                   help="pnnunet: its default precision (bf16 convolutions where the CPU has them); pnnunet-fp32: "
                        "Paddle Inference in float32")
    p.add_argument("--upstream-python", default="/work/venvs/upstream/bin/python")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    args.work = args.work.resolve()
    print(table(run(args)))


if __name__ == "__main__":
    main()
