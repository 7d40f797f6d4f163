"""``runtime.checkpoints.load_checkpoint`` reads the pickle with the allow-list unpickler before Paddle does:
pnnunet's own checkpoints load as before, anything naming another Python object is refused unrun."""

import collections
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from pnnunet.errors import PnnunetError  # noqa: E402
from pnnunet.runtime.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402


def test_a_checkpoint_of_tensors_numpy_and_plain_python_loads(tmp_path):
    path = tmp_path / "ok.pdparams"
    layer = paddle.nn.Linear(3, 2)
    opt = paddle.optimizer.Momentum(parameters=layer.parameters(), learning_rate=0.1, momentum=0.9)
    layer(paddle.ones([1, 3])).sum().backward()
    opt.step()
    save_checkpoint(path, {"network_weights": layer.state_dict(), "optimizer_state": opt.state_dict(),
                           "scalar": np.float64(0.5), "array": np.arange(4, dtype=np.int16),
                           "log": {"loss": [0.1, np.float32(0.2)], "name": "x", "none": None}, "epoch": 3})
    state = load_checkpoint(path)
    assert np.array_equal(np.asarray(state["network_weights"]["weight"]), layer.weight.numpy())
    assert set(state["optimizer_state"]) == set(opt.state_dict())
    assert state["epoch"] == 3 and float(state["scalar"]) == 0.5 and state["log"]["name"] == "x"
    assert np.array_equal(state["array"], np.arange(4, dtype=np.int16))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "checkpoint_final.pdparams"
    path.write_bytes(pickle.dumps({"network_weights": collections.OrderedDict(w=Evil())}))
    with pytest.raises(PnnunetError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "refused" in msg and "pathlib.Path.touch" in msg and "fix:" in msg
    assert not marker.exists()


@pytest.mark.parametrize("array, says", [(np.array([{"a": 1}], dtype=object), "object dtype"),
                                         (np.zeros(2, dtype=[("a", "<f4")]), "structured (void) dtype")])
def test_object_and_structured_arrays_are_refused(tmp_path, array, says):
    path = tmp_path / "objects.pdparams"
    path.write_bytes(pickle.dumps({"network_weights": {"w": array}}))
    with pytest.raises(PnnunetError, match=re.escape(f"refused: it holds a numpy {says}")):
        load_checkpoint(path)


def test_a_damaged_checkpoint_is_still_called_damaged(tmp_path):
    path = tmp_path / "cut.pdparams"
    save_checkpoint(path, {"network_weights": {"w": paddle.ones([64, 64])}})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(PnnunetError, match="damaged or not a checkpoint"):
        load_checkpoint(path)
