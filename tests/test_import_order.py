"""Importing pnnunet and then Paddle, and using blosc2 and skimage.io afterwards, must not crash (Paddle 2.6.2's
bundled zlib segfaults a library that loads zlib after it; pnnunet loads those first)."""

import subprocess
import sys

import pytest

pytest.importorskip("paddle")


def test_pnnunet_then_paddle_then_zlib_users():
    code = ("import pnnunet, paddle, numpy as np, blosc2, skimage.io\n"
            "a = blosc2.asarray(np.arange(1000, dtype='f4').reshape(10, 10, 10))\n"
            "print(float(a[:].sum()))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "499500.0"
