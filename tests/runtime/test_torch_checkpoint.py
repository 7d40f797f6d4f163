"""The torch-free reader of torch.save files (issue 11): real torch files, and files it must refuse.

The files under tests/data/upstream_models/reader were written by torch itself
(benchmarks/upstream/make_torch_reader_fixtures.py); the refused ones are built here, byte by byte.
"""

from __future__ import annotations

import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pnnunet.errors import PnnunetError
from pnnunet.runtime.torch_checkpoint import SKIPPED, _RestrictedUnpickler, read_torch_checkpoint

READER = Path(__file__).resolve().parents[1] / "data" / "upstream_models" / "reader"
TENSORS = READER / "tensors.pth"


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy the zip ``src`` to ``dst``, passing each (name, bytes) through ``change`` (None drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            item = change(info.filename, zin.read(info.filename))
            if item is not None:
                zout.writestr(item[0], item[1])
    return dst


def test_reads_every_dtype_and_layout_as_torch_wrote_them():
    expected = np.load(READER / "expected.npz")
    ckpt = read_torch_checkpoint(TENSORS)
    for key in expected.files:
        group, name = key.split("/")
        got = ckpt[group][name]
        assert got.dtype == expected[key].dtype, key
        np.testing.assert_array_equal(got, expected[key], err_msg=key)
        assert got.flags.c_contiguous and got.flags.writeable, key
    assert type(ckpt["network_weights"]).__name__ == "OrderedDict"
    assert ckpt["device"] == "cpu"
    assert ckpt["numbers"][:3] == [0.25, 1.5, 7] and isinstance(ckpt["numbers"][0], np.float64)
    assert ckpt["numbers"][3:] == [3, 2.5, "text", None, (1, 2)]
    assert ckpt["inference_allowed_mirroring_axes"] == (0, 1, 2)


def test_optimizer_state_is_skipped_unless_asked_for():
    ckpt = read_torch_checkpoint(TENSORS)
    assert ckpt["optimizer_state"] == SKIPPED and ckpt["grad_scaler_state"] == SKIPPED
    full = read_torch_checkpoint(TENSORS, skip=())
    momentum = full["optimizer_state"]["state"][0]["momentum_buffer"]
    assert momentum.shape == (2, 3) and momentum.dtype == np.float32
    assert full["grad_scaler_state"] is None


def test_any_top_folder_name(tmp_path):
    renamed = _rewrite(TENSORS, tmp_path / "x.pth", lambda n, b: ("some_other_name/" + n.split("/", 1)[1], b))
    np.testing.assert_array_equal(read_torch_checkpoint(renamed)["tensors"]["float32"],
                                  read_torch_checkpoint(TENSORS)["tensors"]["float32"])


def test_big_endian_file(tmp_path):
    """A file written on a big-endian machine: ``byteorder`` says so, storages are byte-swapped."""
    itemsizes = {}
    ckpt = read_torch_checkpoint(TENSORS, skip=())

    def swap(name, data):
        if name.endswith("/byteorder"):
            return name, b"big"
        if "/data/" in name:
            key = name.rsplit("/", 1)[1]
            return name, np.frombuffer(data, dtype=np.dtype(f"u{itemsizes[key]}")).byteswap().tobytes()
        return name, data

    # storage key -> item size, from the pickle's persistent ids
    with zipfile.ZipFile(TENSORS) as z:
        top = z.namelist()[0].split("/")[0]
        storages = {}
        _RestrictedUnpickler(z.open(f"{top}/data.pkl"), storages).load()
        has_byteorder = f"{top}/byteorder" in z.namelist()
    for key, storage in storages.items():
        itemsizes[key] = 2 if storage.dtype == "bfloat16" else np.dtype(storage.dtype).itemsize
    assert has_byteorder
    swapped = read_torch_checkpoint(_rewrite(TENSORS, tmp_path / "big.pth", swap), skip=())
    for name in ("float32", "float16", "bfloat16", "int64", "transposed", "shared_b"):
        np.testing.assert_array_equal(swapped["tensors"][name], ckpt["tensors"][name], err_msg=name)
        assert swapped["tensors"][name].dtype.isnative


def _zip_with_pickle(path: Path, payload: bytes, top: str = "archive") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{top}/data.pkl", payload)
        z.writestr(f"{top}/byteorder", "little")
        z.writestr(f"{top}/version", "3\n")
    return path


class _CallsSystem:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_pickle_that_calls_os_system(tmp_path):
    marker = tmp_path / "pwned"
    bad = _zip_with_pickle(tmp_path / "evil.pth", pickle.dumps({"network_weights": _CallsSystem(marker)}, protocol=2))
    with pytest.raises(PnnunetError) as err:
        read_torch_checkpoint(bad)
    msg = str(err.value)
    assert str(bad) in msg and "refused" in msg and "system" in msg
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(Path("x"), protocol=2),                        # pathlib: a class outside the list
    b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R.",      # builtins.eval('1+1')
    b"\x80\x02ctorch\nload\nX\x01\x00\x00\x00x\x85R.",           # a torch global that is not allowed
])
def test_refuses_any_global_outside_the_allow_list(tmp_path, payload):
    with pytest.raises(PnnunetError, match="refused to load"):
        read_torch_checkpoint(_zip_with_pickle(tmp_path / "g.pth", payload))


def test_numpy_scalars_are_read_and_object_dtypes_refused(tmp_path):
    good = _zip_with_pickle(tmp_path / "s.pth", pickle.dumps({"best": np.float32(0.5), "n": np.int64(3)}, protocol=2))
    assert read_torch_checkpoint(good) == {"best": np.float32(0.5), "n": np.int64(3)}
    # numpy.dtype('O') built by the pickle: refused before anything of it is used
    payload = b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8\x85R."
    with pytest.raises(PnnunetError, match="refused to load.*object dtype"):
        read_torch_checkpoint(_zip_with_pickle(tmp_path / "o.pth", payload))


def test_refuses_non_checkpoints(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    not_torch = tmp_path / "plain.zip"
    with zipfile.ZipFile(not_torch, "w") as z:
        z.writestr("a.txt", "x")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(TENSORS.read_bytes()[:2000])
    for path in (text, not_torch, truncated):
        with pytest.raises(PnnunetError, match="not a PyTorch checkpoint") as err:
            read_torch_checkpoint(path)
        assert str(path) in str(err.value)
    with pytest.raises(PnnunetError, match="cannot be read"):
        read_torch_checkpoint(tmp_path / "missing.pth")


def test_legacy_format_gets_its_own_message(tmp_path):
    legacy = tmp_path / "old.pth"
    # what torch < 1.6 wrote first: the pickled magic number, protocol version, system info, ...
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2))
    with pytest.raises(PnnunetError, match="legacy") as err:
        read_torch_checkpoint(legacy)
    assert str(legacy) in str(err.value)


def test_tensor_reaching_beyond_its_storage_is_refused(tmp_path):
    def shrink(name, data):
        return (name, data[:8]) if name.endswith("/data/0") else (name, data)

    with pytest.raises(PnnunetError, match="beyond its storage"):
        read_torch_checkpoint(_rewrite(TENSORS, tmp_path / "short.pth", shrink), skip=())


def test_no_torch_imported():
    assert "torch" not in sys.modules
