"""Progress log, trainer variants and name-independent optimizer checkpoints."""

import math

import numpy as np
import paddle
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.runtime import checkpoints as ck
from pnnunet.training.config import make_train_config, trainer_overrides
from pnnunet.training.progress import ProgressLog


def test_ema_and_best():  # §5.7: ema = 0.9 ema + 0.1 dice, first epoch = dice, best strictly greater
    p = ProgressLog()
    assert p.record_epoch(0.01, 0.0, 1.0, 1.0, [0.5, 0.7])
    assert p.ema_fg_dice[-1] == pytest.approx(0.6)
    assert not p.record_epoch(0.009, 0.0, 1.0, 1.0, [0.2, 0.2])  # ema 0.56 < 0.6
    assert p.ema_fg_dice[-1] == pytest.approx(0.9 * 0.6 + 0.1 * 0.2)
    assert p.record_epoch(0.008, 0.0, 1.0, 1.0, [1.0, 1.0])  # 0.604 > 0.6
    assert p.best_ema == pytest.approx(0.9 * 0.56 + 0.1)
    assert "epoch 2 |" in p.epoch_line(2)
    restored = ProgressLog.from_dict(p.to_dict())
    assert restored == p


def test_nan_dice_class_is_ignored_in_mean():
    p = ProgressLog()
    p.record_epoch(0.01, 0.0, 1.0, 1.0, [float("nan"), 0.4])
    assert p.mean_fg_dice[-1] == pytest.approx(0.4) and not math.isnan(p.ema_fg_dice[-1])


def test_progress_plot_written(tmp_path):
    p = ProgressLog()
    for e in range(3):
        p.record_epoch(0.01, 0.0, 1.0 - e / 10, 1.0, [0.1 * e])
    p.plot(tmp_path / "progress.png")
    assert (tmp_path / "progress.png").read_bytes()[:4] == b"\x89PNG"


def test_trainer_variants():
    assert trainer_overrides("pnnunetTrainer_5epochs") == {"num_epochs": 5}
    assert trainer_overrides("nnUNetTrainer_250epochs") == {"num_epochs": 250}
    assert trainer_overrides("nnUNetTrainerNoMirroring") == {"mirroring": False}
    cfg = make_train_config("pnnunetTrainer_20epochs", iterations_per_epoch=50, num_epochs=None)
    assert (cfg.num_epochs, cfg.iterations_per_epoch, cfg.val_iterations_per_epoch) == (20, 50, 50)
    with pytest.raises(PnnunetError, match="did you mean 'pnnunetTrainerNoMirroring'"):
        trainer_overrides("pnnunetTrainerNoMirorring")


def _net_and_opt():
    net = paddle.nn.Sequential(paddle.nn.Linear(4, 8), paddle.nn.LeakyReLU(0.01), paddle.nn.Linear(8, 3))
    opt = paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.99, use_nesterov=True, weight_decay=3e-5,
                                    parameters=net.parameters(), grad_clip=paddle.nn.ClipGradByGlobalNorm(12.0))
    return net, opt


def _steps(net, opt, batches):
    for x, y in batches:
        loss = paddle.nn.functional.cross_entropy(net(paddle.to_tensor(x)), paddle.to_tensor(y))
        loss.backward()
        opt.step()
        opt.clear_grad()


def test_resume_is_bit_exact_across_parameter_names(tmp_path):
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(5, 4)).astype(np.float32), rng.integers(0, 3, (5,)).astype(np.int64))
               for _ in range(6)]
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        net, opt = _net_and_opt()
        init = {k: v.numpy().copy() for k, v in net.state_dict().items()}
        _steps(net, opt, batches)
        straight = {k: v.numpy() for k, v in net.state_dict().items()}
    with paddle.utils.unique_name.guard():
        net, opt = _net_and_opt()
        net.set_state_dict(init)
        _steps(net, opt, batches[:3])
        ck.save_checkpoint(tmp_path / "c.pdparams", {"w": net.state_dict(),
                                                     "o": ck.optimizer_state_by_structured_names(net, opt)})
    # Build extra layers first so the auto-generated parameter names differ from the saved ones.
    _net_and_opt()
    net2, opt2 = _net_and_opt()
    state = ck.load_checkpoint(tmp_path / "c.pdparams")
    assert any("|" in k for k in state["o"])
    net2.set_state_dict(state["w"])
    ck.load_optimizer_state(net2, opt2, state["o"])
    with paddle.utils.unique_name.guard():  # accumulators are created lazily at the first step
        _steps(net2, opt2, batches[3:])
    resumed = {k: v.numpy() for k, v in net2.state_dict().items()}
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "checkpoint_latest.pdparams"
    bad.write_bytes(b"garbage")
    with pytest.raises(PnnunetError, match="cannot be loaded"):
        ck.load_checkpoint(bad)
    assert ck.latest_existing(tmp_path) == bad


def test_issue_14_only_a_damaged_checkpoint_gets_the_delete_advice(tmp_path, monkeypatch):
    """Out of memory, a pickle naming a foreign module (refused unrun), an unreadable file: reported as such,
    never 'delete it'."""
    import pickle
    import sys
    import types

    good = tmp_path / "checkpoint_final.pdparams"
    ck.save_checkpoint(good, {"w": np.ones(3, np.float32)})
    truncated = tmp_path / "checkpoint_latest.pdparams"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PnnunetError, match="damaged or not a checkpoint; delete it"):
        ck.load_checkpoint(truncated)

    ghost = types.ModuleType("pnnunet_ghost_module")
    ghost.Thing = type("Thing", (), {"__module__": "pnnunet_ghost_module"})
    monkeypatch.setitem(sys.modules, "pnnunet_ghost_module", ghost)
    needs_module = tmp_path / "needs_module.pdparams"
    needs_module.write_bytes(pickle.dumps({"t": ghost.Thing()}, protocol=4))
    monkeypatch.delitem(sys.modules, "pnnunet_ghost_module")
    with pytest.raises(PnnunetError, match="refused: it names the Python object pnnunet_ghost_module.Thing") as e:
        ck.load_checkpoint(needs_module)
    assert "delete" not in str(e.value)

    def out_of_memory(*_a, **_k):
        raise MemoryError("simulated")

    monkeypatch.setattr(paddle, "load", out_of_memory)
    with pytest.raises(PnnunetError, match="out of memory while loading") as e:
        ck.load_checkpoint(good)
    assert "do not delete it" in str(e.value)

    def bug(*_a, **_k):
        raise TypeError("a bug in our code")

    monkeypatch.setattr(paddle, "load", bug)
    with pytest.raises(TypeError):  # not turned into advice about the file
        ck.load_checkpoint(good)
    monkeypatch.setattr(paddle, "load", lambda *_a, **_k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(PnnunetError, match="cannot be read \\(Permission denied\\)"):
        ck.load_checkpoint(good)
