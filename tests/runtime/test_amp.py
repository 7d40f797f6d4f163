"""Mixed precision: the autocast lists (3D convolutions in float16, norms/softmax/CE in float32), the
GradScaler (skipped inf steps counted, state in checkpoints) — on CPU, where Paddle's autocast and
GradScaler switch themselves off, by inspecting what Paddle installs and by force-enabling the scaler."""

import contextlib
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import paddle

from pnnunet.runtime import amp
from pnnunet.runtime import checkpoints as ck
from tests.training.synthetic import fixed_batches, make_trainer


def _tracer():
    from paddle.base.framework import _dygraph_tracer
    return _dygraph_tracer()


def test_autocast_kwargs_cover_all_convolutions():
    kw = amp.autocast_kwargs("gpu:1")
    assert kw["enable"] and kw["level"] == "O1" and kw["dtype"] == "float16"
    assert {"conv2d", "conv3d", "conv2d_transpose", "conv3d_transpose", "depthwise_conv2d"} <= kw["custom_white_list"]
    assert {"instance_norm", "softmax", "softmax_with_cross_entropy", "cross_entropy"} <= kw["custom_black_list"]
    assert not kw["custom_white_list"] & kw["custom_black_list"]
    assert amp.autocast_kwargs("cpu")["enable"] is False
    assert amp.precision_of("gpu") == "float16 AMP" and amp.precision_of("cpu") == "float32"


def test_paddle_default_white_list_lacks_conv3d():  # why the custom list is needed (both versions)
    from paddle.amp import amp_lists
    white = amp_lists.white_list()["float16"]["O1"]
    assert "conv2d" in white and not {"conv3d", "conv3d_transpose"} & white


def test_autocast_lists_installed_by_paddle_contain_the_3d_convolutions():
    # enable=True on CPU: Paddle warns and runs fp32, but installs the effective op lists on the tracer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with paddle.amp.auto_cast(**amp.autocast_kwargs("gpu")):
            white, black = _tracer()._get_amp_op_list()
    for op in ("conv3d", "conv3d_transpose", "conv2d", "conv2d_transpose", "depthwise_conv2d"):
        assert op in white and op not in black, op
    for op in ("instance_norm", "softmax", "softmax_with_cross_entropy"):
        assert op in black and op not in white, op


_PROBE = textwrap.dedent("""
    import warnings
    import pnnunet  # first: on Paddle 2.6.2 zlib users loaded after paddle segfault (pnnunet/__init__.py)
    import paddle
    from paddle.base import core
    from paddle.base.framework import _dygraph_tracer
    from pnnunet.runtime.amp import autocast_kwargs
    conv, tconv = paddle.nn.Conv3D(2, 4, 3, padding=1), paddle.nn.Conv3DTranspose(4, 2, 2, stride=2)
    norm = paddle.nn.InstanceNorm3D(4, weight_attr=False, bias_attr=False)
    x = paddle.randn([1, 2, 4, 4, 4]); h = conv(x); h16 = h.astype("float16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctx = paddle.amp.auto_cast(**autocast_kwargs("gpu")); ctx.__enter__()
    tr = _dygraph_tracer(); tr._amp_level = core.AmpLevel.O1; tr._amp_dtype = "float16"  # what a GPU would get
    for name, fn in (("conv3d", lambda: conv(x)), ("conv3d_transpose", lambda: tconv(h)),
                     ("instance_norm", lambda: norm(h16)), ("softmax", lambda: paddle.nn.functional.softmax(h16, 1))):
        print("@@BEGIN", name, flush=True); fn(); print("@@END", name, flush=True)
    ctx.__exit__(None, None, None)
""")


def test_autocast_decides_float16_for_3d_convolutions():
    """Paddle's C++ AMP layer logs "Change <op>'s AMP type from float16 to FP32" when it chose float16
    for an op but the (CPU) kernel table has none: on CPU that line is the proof that a GPU would run
    the op in float16. instance_norm and softmax must not get that decision."""
    env = dict(os.environ, GLOG_vmodule="amp_utils=6", GLOG_logtostderr="1", PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=120).stdout
    blocks, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@@BEGIN"):
            cur = line.split()[1]
            blocks[cur] = []
        elif line.startswith("@@END"):
            cur = None
        elif cur:
            blocks[cur].append(line)
    chose_fp16 = {op: any(f"Change {op}'s AMP type from float16" in ln for ln in lines) for op, lines in blocks.items()}
    assert chose_fp16 == {"conv3d": True, "conv3d_transpose": True, "instance_norm": False, "softmax": False}, out[-3000:]


@contextlib.contextmanager
def scaler_enabled_on_cpu():
    """Test only: Paddle's GradScaler disables itself unless the expected place is a GPU; pretend one
    while it is constructed so its logic (inf check, skip, scale update, state) runs on CPU."""
    import paddle.amp.grad_scaler as gs
    real = gs._dygraph_tracer

    class Place:
        def is_gpu_place(self):
            return True

        def is_xpu_place(self):
            return False

        def is_custom_place(self):
            return False

    class Proxy:
        def __init__(self, t):
            self._t, self._expected_place = t, Place()

        def __getattr__(self, a):
            return getattr(self._t, a)

    gs._dygraph_tracer = lambda: Proxy(real())
    try:
        yield
    finally:
        gs._dygraph_tracer = real


def test_cpu_has_no_scaler():
    assert amp.make_grad_scaler("cpu") is None
    assert amp.loss_scale(None) == 1.0 and not amp.last_step_skipped(None)


def _params(net):
    return {k: v.numpy().copy() for k, v in net.state_dict().items()}


def test_inf_step_is_skipped_and_counted_and_scaler_state_resumes(tmp_path):
    batch = fixed_batches(1, batch_size=2)[0]
    bad = {"data": batch["data"].copy(), "target": batch["target"]}
    bad["data"][0, 0, 0, 0, 0] = np.inf
    with paddle.utils.unique_name.guard():
        paddle.seed(0)
        trainer = make_trainer(tmp_path, batch_size=2)
        trainer.build()
        with scaler_enabled_on_cpu():
            trainer.scaler = amp.make_grad_scaler("gpu")
        assert trainer.scaler.is_enable() and amp.loss_scale(trainer.scaler) == 2.0 ** 16

        before = _params(trainer.network)
        trainer.train_step(batch)  # finite: the parameters move
        moved = _params(trainer.network)
        assert any(not np.array_equal(before[k], moved[k]) for k in before)
        assert trainer.skipped_steps == 0

        trainer.train_step(bad)  # inf input -> inf/nan gradients: skipped, counted, scale halved
        assert trainer.skipped_steps == 1
        after = _params(trainer.network)
        assert all(np.array_equal(moved[k], after[k]) for k in moved)
        assert amp.loss_scale(trainer.scaler) == 2.0 ** 15

        trainer.train_step(batch)
        assert trainer.skipped_steps == 1
        payload = trainer._payload()
    assert payload["precision"] == "float32"  # the job's device is cpu; the scaler was forced
    state = payload["grad_scaler_state"]
    assert float(np.asarray(state["scale"]).reshape(-1)[0]) == 2.0 ** 15 and state["incr_count"] == 1

    path = tmp_path / "checkpoint_latest.pdparams"
    ck.save_checkpoint(path, payload)
    with paddle.utils.unique_name.guard():
        resumed = make_trainer(tmp_path, batch_size=2)
        resumed.build()
        with scaler_enabled_on_cpu():
            resumed.scaler = amp.make_grad_scaler("gpu")
        resumed._restore(path)
    assert amp.loss_scale(resumed.scaler) == 2.0 ** 15
    assert resumed.scaler.state_dict()["incr_count"] == 1


def test_skipped_steps_in_the_epoch_line():
    from pnnunet.training.progress import ProgressLog
    p = ProgressLog()
    p.record_epoch(0.01, 0.0, 1.0, 1.0, [0.5], skipped_steps=3)
    assert "skipped_steps 3" in p.epoch_line(0)
    old = ProgressLog.from_dict({k: v for k, v in p.to_dict().items() if k != "skipped_steps"})
    old.record_epoch(0.01, 0.0, 1.0, 1.0, [0.5])  # a log from before the field: padded
    assert old.skipped_steps == [0, 0]
