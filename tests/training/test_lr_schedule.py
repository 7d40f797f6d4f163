"""Poly LR against reference Appendix B (§5.1)."""

import paddle
import pytest

from pnnunet.training.lr_schedule import poly_lr, set_epoch_lr

# Appendix B: initial 0.01, 1000 epochs
APPENDIX_B = [(0, 0.01), (1, 0.009991), (250, 0.0077189), (500, 0.0053589), (750, 0.0028717), (900, 0.0012589),
              (999, 1.9953e-05)]


@pytest.mark.parametrize("epoch, expected", APPENDIX_B)
def test_poly_lr_appendix_b(epoch, expected):
    assert poly_lr(epoch, 1000) == pytest.approx(expected, rel=5e-5)


def test_poly_lr_short_schedule():
    # paddle_notes §2.2: LambdaDecay(0.01, (1 - ep/10)**0.9) gave 0.01, 0.0090953, 0.0081805
    assert [round(poly_lr(e, 10), 7) for e in range(3)] == [0.01, 0.0090953, 0.0081805]
    assert poly_lr(5, 10, initial_lr=1.0, exponent=1.0) == 0.5


def test_poly_lr_rejects_bad_epochs():
    with pytest.raises(ValueError):
        poly_lr(1001, 1000)
    with pytest.raises(ValueError):
        poly_lr(0, 0)


def test_set_epoch_lr_on_paddle_optimizer():
    param = paddle.create_parameter([2], "float32")
    opt = paddle.optimizer.Momentum(0.01, momentum=0.99, parameters=[param], use_nesterov=True)
    for epoch, expected in APPENDIX_B:
        lr = set_epoch_lr(opt, epoch, 1000)
        assert lr == pytest.approx(expected, rel=5e-5)
        assert opt.get_lr() == pytest.approx(lr, rel=1e-12)
