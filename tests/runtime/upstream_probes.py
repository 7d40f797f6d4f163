"""The deterministic weights and output probes the upstream fixture scripts use (compare forward passes)."""

import numpy as np


def fill_like_upstream_script(net) -> None:
    """Parameter k (registration order) = 0.5·sin(0.37·j + 1.3·k), j the flat index."""
    for k, p in enumerate(net.parameters()):
        n = int(np.prod(p.shape))
        p.set_value((0.5 * np.sin(0.37 * np.arange(n) + 1.3 * k)).reshape(list(p.shape)).astype(np.float32))


def probe(out) -> list[float]:
    """[sum, sum of squares, sum(out·cos(0.5·j))] of one output."""
    o = out.numpy().astype(np.float64)
    w = np.cos(0.5 * np.arange(o.size)).reshape(o.shape)
    return [o.sum(), (o * o).sum(), (o * w).sum()]
