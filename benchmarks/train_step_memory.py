"""Where a training step's memory goes: RSS of this process around forward, backward and the optimizer
step of one configuration's network (built as ``Trainer._build`` does, oneDNN convolutions), on a
random batch of the plan's batch and patch size; a thread samples RSS every 10 ms for the peaks.

    python benchmarks/train_step_memory.py --plans <preprocessed>/Dataset916_SynthCT/pnnunetPlans.json \\
        -c 3d_lowres [--batch 1] [--paddle_leaky_relu]

``--paddle_leaky_relu``: the training LeakyReLU that keeps its input (pnnunet before issue 16).
``--heap glibc``: glibc's default heap policy during the steps (pnnunet before the trainer's heap policy;
``--heap training``, the default, is what ``Trainer.fit`` does now: ``heap.TrainingHeap``, freed memory
returned + a trim after each step, or kept from the second step on when the process is small enough).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F

import pnnunet.runtime.network as network_module
from pnnunet.heap import TrainingHeap, trim_heap
from pnnunet.plans import ConfigurationPlan
from pnnunet.runtime.architectures import build_network
from pnnunet.runtime.network import recompute_encoder_stages, save_activation_memory, saving_activation_memory_pays
from pnnunet.runtime.onednn.layers import accelerate_convolutions
from pnnunet.runtime.onednn.primitives import release_plans
from pnnunet.training.deep_supervision import downsample_seg_for_ds, ds_scales, ds_weights
from pnnunet.training.loss import DCandCELoss, DeepSupervisionLoss

PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 1024 ** 3


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


class Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, False

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.01)

    def take(self) -> int:
        peak, self.peak = max(self.peak, rss()), rss()
        return peak


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--plans", type=Path, required=True)
    p.add_argument("-c", "--configuration", default="3d_lowres")
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--input_channels", type=int, default=None,
                   help="network input channels (default 1; a cascade stage: 1 + the foreground labels)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="instead of the plan's batch size")
    p.add_argument("--patch", type=int, nargs="+", default=None, help="instead of the plan's patch size")
    p.add_argument("--paddle_leaky_relu", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed-precision convolutions (the CPU needs them)")
    p.add_argument("--save_memory", choices=("auto", "on", "off"), default="auto",
                   help="fused norm + LeakyReLU and no decoder concatenation (TrainConfig.cpu_save_activation_memory)")
    p.add_argument("--recompute_stages", type=int, default=0,
                   help="encoder stages recomputed in the backward pass (TrainConfig.cpu_recompute_stages)")
    p.add_argument("--heap", choices=("training", "glibc"), default="training",
                   help="training: as Trainer on CPU (freed blocks >= 1 MiB unmapped, heap trimmed after each "
                        "step); glibc: the C library's defaults")
    a = p.parse_args()
    if a.paddle_leaky_relu:
        network_module.leaky_relu_saving_output = lambda x, slope=0.01: F.leaky_relu(x, slope)
    paddle.set_device("cpu")
    plan = ConfigurationPlan.from_plans(json.loads(a.plans.read_text()), a.configuration, a.plans)
    cfg = plan.raw  # inheritance resolved (a cascade stage: 3d_fullres + previous_stage)
    bs, patch = int(a.batch or cfg["batch_size"]), [int(s) for s in (a.patch or cfg["patch_size"])]
    s = Sampler()
    s.start()
    rows = [("start (paddle imported)", rss(), rss())]
    paddle.seed(0)
    channels = a.input_channels or (a.classes if "previous_stage" in cfg else 1)
    net = build_network(cfg, channels, a.classes, deep_supervision=True)
    accelerate_convolutions(net, training_precision="bf16" if a.bf16 else "f32")
    recompute_encoder_stages(net, a.recompute_stages)
    save = {"on": True, "off": False}.get(a.save_memory)
    if save is None:  # auto: as the trainer (TrainConfig.cpu_save_activation_memory=None)
        save = saving_activation_memory_pays(bs, cfg["architecture"]["arch_kwargs"]["features_per_stage"], patch)
    save_activation_memory(net, save)
    print(f"activation memory saving (fused norm + LeakyReLU, no decoder concatenation): {'on' if save else 'off'}")
    opt = paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.99, use_nesterov=True,
                                    weight_decay=paddle.regularizer.L2Decay(3e-5), parameters=net.parameters(),
                                    grad_clip=paddle.nn.ClipGradByGlobalNorm(12.0))
    loss_fn = DeepSupervisionLoss(DCandCELoss(batch_dice=cfg["batch_dice"]),
                                  ds_weights(cfg["architecture"]["arch_kwargs"]["n_stages"]))
    rng = np.random.default_rng(0)
    data = rng.standard_normal((bs, channels, *patch)).astype(np.float32)
    seg = rng.integers(0, a.classes, (bs, 1, *patch)).astype(np.int16)
    targets_np = downsample_seg_for_ds(seg, ds_scales(cfg["architecture"]["arch_kwargs"]["strides"]))
    rows.append(("network + optimizer + batch", s.take(), rss()))
    heap = contextlib.ExitStack()  # closed after the steps
    policy = heap.enter_context(TrainingHeap()) if a.heap == "training" else None
    for step in range(a.steps):
        x = paddle.to_tensor(data)
        targets = [paddle.to_tensor(np.asarray(t, dtype=np.int64)) for t in targets_np]
        opt.clear_grad()
        t0 = time.time()
        out = net(x)
        loss = loss_fn(out, targets)
        rows.append((f"step {step} forward + loss", s.take(), rss()))
        loss.backward()
        rows.append((f"step {step} backward", s.take(), rss()))
        opt.step()
        value = float(loss.numpy())
        del out, loss, x, targets
        if policy is not None and policy.after_step():
            print(f"heap policy after step {step}: {policy.decision} ({policy.reason})", flush=True)
        rows.append((f"step {step} optimizer step, outputs freed ({time.time() - t0:.0f} s, loss {value:.4f})",
                     s.take(), rss()))
    heap.close()
    del opt, net, loss_fn
    release_plans()
    rows.append(("network, optimizer, oneDNN plans dropped", s.take(), rss()))
    trim_heap()
    rows.append(("malloc_trim", s.take(), rss()))
    s.stop = True
    print(f"{a.configuration}: batch {bs}, patch {patch}, "
          f"{'Paddle leaky_relu' if a.paddle_leaky_relu else 'leaky_relu saving its output'}, "
          f"{a.recompute_stages} encoder stage(s) recomputed, heap policy {a.heap}")
    print(f"{'':70s} {'peak GiB':>9s} {'after GiB':>9s}")
    for name, peak, after in rows:
        print(f"{name:70s} {peak / GIB:9.2f} {after / GIB:9.2f}")


if __name__ == "__main__":
    main()
