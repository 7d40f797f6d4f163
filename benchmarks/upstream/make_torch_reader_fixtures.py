"""Small ``torch.save`` files for pnnunet's torch-free checkpoint reader (run in the upstream venv).

    /work/venvs/upstream/bin/python benchmarks/upstream/make_torch_reader_fixtures.py --out tests/data/upstream_models/reader

``tensors.pth``: every storage dtype the reader supports, non-contiguous views (transposed, sliced
with an offset, two tensors sharing one storage), a Parameter, an OrderedDict, numpy scalars, a
torch.device, nested containers and an optimizer state. ``expected.npz``: the same tensors as numpy
(bfloat16 widened to float32), written by torch itself.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    out = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    shared = torch.arange(24, dtype=torch.float32)
    tensors = {
        "float32": torch.randn(2, 3, 4, generator=g),
        "float16": torch.randn(5, generator=g).half(),
        "bfloat16": torch.randn(3, 2, generator=g).bfloat16(),
        "float64": torch.randn(2, 2, generator=g).double(),
        "int64": torch.arange(-3, 7, dtype=torch.int64).reshape(2, 5),
        "int32": torch.tensor([1, -2, 3], dtype=torch.int32),
        "uint8": torch.tensor([0, 7, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),
        "offset_slice": base[1:3, 2:5],
        "shared_a": shared[2:10].view(2, 4),
        "shared_b": shared[10:].view(7, 2)[::2],
    }
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer(torch.randn(4, 3, generator=g)).sum().backward()
    opt.step()
    payload = {
        "network_weights": collections.OrderedDict([("weight", layer.weight), ("bias", layer.bias)]),
        "tensors": tensors,
        "optimizer_state": opt.state_dict(),
        "grad_scaler_state": None,
        "device": torch.device("cpu"),
        "numbers": [np.float64(0.25), np.float32(1.5), np.int64(7), 3, 2.5, "text", None, (1, 2)],
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(payload, out / "tensors.pth")
    expected = {f"tensors/{k}": (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in tensors.items()}
    expected["network_weights/weight"] = layer.weight.detach().numpy()
    expected["network_weights/bias"] = layer.bias.detach().numpy()
    np.savez(out / "expected.npz", **expected)
    print(f"torch {torch.__version__}: wrote {out / 'tensors.pth'} and {out / 'expected.npz'}")


if __name__ == "__main__":
    main()
