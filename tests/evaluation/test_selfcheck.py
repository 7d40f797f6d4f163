"""The self-check's CPU subset (pnnunet_selfcheck on a machine without a GPU) is part of the suite so
that it cannot rot; on a GPU the same code also checks float16 autocast and fp16 vs fp32 prediction."""

from __future__ import annotations

import pytest

from pnnunet.cli import selfcheck as cli
from pnnunet.evaluation import selfcheck
from pnnunet.evaluation.selfcheck import Check, run_selfcheck

pytest.importorskip("paddle")


@pytest.mark.e2e
def test_cpu_selfcheck_passes(tmp_path):
    checks = run_selfcheck(tmp_path, "cpu")
    by_name = {c.name: c for c in checks}
    assert {"versions", "device", "autocast", "training", "speed", "resume", "static vs eager"} <= set(by_name)
    assert [c for c in checks if c.status == "FAIL"] == []
    assert by_name["autocast"].status == "SKIP" and "conv3d" in by_name["autocast"].detail  # no GPU here
    assert by_name["training"].status == by_name["resume"].status == by_name["static vs eager"].status == "PASS"
    assert "iterations/s" in by_name["speed"].detail
    reduced = [c for c in checks if c.name in ("bf16 vs fp32", "reduced vs full precision")]
    assert len(reduced) == 1 and reduced[0].status in ("PASS", "SKIP")


def test_a_failed_check_fails_the_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(selfcheck, "run_selfcheck", lambda work, device: [Check("versions", "INFO", "x"),
                                                                          Check("resume", "FAIL", "differs by 1")])
    assert cli.main(["-device", "cpu", "--workdir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL resume: differs by 1" in out and "FAILED: resume" in out


def test_state_difference_sees_what_was_not_restored():
    """The resume check compares network and optimizer state with the checkpoint: a fresh optimizer
    (momentum not restored) or one more step must count as a difference."""
    import paddle

    from pnnunet.runtime.checkpoints import optimizer_state_by_structured_names

    net = paddle.nn.Linear(3, 2)
    opt = paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=net.parameters())

    def step():
        net(paddle.ones([4, 3])).sum().backward()
        opt.step()
        opt.clear_grad()

    step()
    saved = {"network_weights": {k: v.clone() for k, v in net.state_dict().items()},
             "optimizer_state": {k: v.clone() for k, v in optimizer_state_by_structured_names(net, opt).items()}}
    assert selfcheck._state_difference(saved, net, opt) == 0.0
    fresh = paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=net.parameters())
    assert selfcheck._state_difference(saved, net, fresh) == float("inf")
    step()
    assert selfcheck._state_difference(saved, net, opt) > 0
