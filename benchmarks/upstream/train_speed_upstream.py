"""Upstream half of benchmarks/train_speed.py: seconds per nnU-Net v2 training iteration on CPU.

Run with the upstream venv (torch + nnunetv2), never with the project's:

    /work/venvs/upstream/bin/python benchmarks/upstream/train_speed_upstream.py \
        --plans nnUNetPlans.json --configuration 3d_fullres --batch batch.npz --out upstream.json

Builds the network exactly as ``nnUNetTrainer`` does (``get_network_from_plans`` with He init,
deep supervision on), the loss as ``nnUNetTrainer._build_loss`` (``DC_and_CE_loss`` with
``MemoryEfficientSoftDiceLoss`` wrapped in ``DeepSupervisionWrapper``), the optimizer as
``configure_optimizers`` (SGD 0.01, momentum 0.99, nesterov, weight decay 3e-5), and times
``nnUNetTrainer.train_step``'s body on CPU: zero_grad, forward, loss, backward, clip_grad_norm_(12),
step, loss to numpy. The batch (``data`` and ``target_<i>`` per deep-supervision scale) comes from
the .npz written by the driver, so both tools train on identical arrays.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib.metadata import version

import numpy as np
import torch


def build(plans: dict, configuration: str, num_input_channels: int, num_classes: int):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    cfg = plans["configurations"][configuration]
    arch = cfg["architecture"]
    network = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                     arch["_kw_requires_import"], num_input_channels, num_classes,
                                     allow_init=True, deep_supervision=True)
    loss = DC_and_CE_loss({"batch_dice": cfg["batch_dice"], "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    n_outputs = len(arch["arch_kwargs"]["strides"]) - 1
    weights = np.array([1 / (2 ** i) for i in range(n_outputs)])
    weights[-1] = 0
    loss = DeepSupervisionWrapper(loss, weights / weights.sum())
    optimizer = torch.optim.SGD(network.parameters(), 0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
    return network, loss, optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plans", required=True)
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--batch", required=True, help=".npz with data and target_0..target_k")
    p.add_argument("--num_classes", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    with open(a.plans) as f:
        plans = json.load(f)
    batch = np.load(a.batch)
    data_np = batch["data"]
    targets_np = [batch[k] for k in sorted((k for k in batch.files if k.startswith("target_")),
                                           key=lambda k: int(k.split("_")[1]))]
    network, loss, optimizer = build(plans, a.configuration, data_np.shape[1], a.num_classes)
    network.train()

    times, losses = [], []
    for i in range(a.warmup + a.iterations):
        t0 = time.perf_counter()
        data = torch.from_numpy(data_np)
        target = [torch.from_numpy(t) for t in targets_np]
        optimizer.zero_grad(set_to_none=True)
        output = network(data)
        l = loss(output, target)
        l.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
        losses.append(float(l.detach().cpu().numpy()))
        times.append(time.perf_counter() - t0)
    result = {
        "tool": "upstream", "mode": "torch eager", "torch": torch.__version__, "nnunetv2": version("nnunetv2"),
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(), "batch_shape": list(data_np.shape),
        "n_parameters": int(sum(q.numel() for q in network.parameters())),
        "warmup": a.warmup, "times": times[a.warmup:], "warmup_times": times[:a.warmup], "losses": losses,
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
