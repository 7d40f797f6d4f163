"""Static-graph export of a fold's network and inference through Paddle Inference (DESIGN "Compute").

On CPU the dynamic graph does not use oneDNN kernels; an exported static graph run by a Paddle
Inference predictor with oneDNN is several times faster (paddle_notes §3.2: 5.5× on a 3D U-Net).
Each fold is exported once into a cache beside its checkpoint::

    fold_K/inference/<checkpoint>/model.json + model.pdiparams   (Paddle 3.x, PIR)
    fold_K/inference/<checkpoint>/model.pdmodel + model.pdiparams (Paddle 2.6)
    fold_K/inference/<checkpoint>/export_meta.json               (what it was made from)

and re-exported when the checkpoint changes (mtime or size) or another Paddle version runs. If the
export or the predictor fails, :func:`make_predict_fn` falls back to the eager network and logs why.

Predict functions map float32 numpy ``(N, C, *P)`` to logits ``(N, K, *P)``; ``P`` is 2 or 3
spatial axes; deep supervision is off.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pnnunet.errors import PnnunetError
from pnnunet.fileio import load_json, remove_stale_temporaries, write_json_atomic
from pnnunet.runtime.amp import amp_enabled_for
from pnnunet.runtime.device import PADDLE_RUNTIME_ERRORS, import_paddle, raise_if_out_of_memory
from pnnunet.runtime.onednn.layers import accelerate_convolutions
from pnnunet.runtime.onednn.primitives import bf16_supported
from pnnunet.runtime.unet_inference import PlannedUNet, unsupported_reason

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]
EXPORT_DIR = "inference"
MODEL_STEM = "model"
META_FILE = "export_meta.json"
GRAPH_SUFFIXES = (".json", ".pdmodel")  # Paddle 3.x (PIR) writes .json, Paddle 2.x .pdmodel
PARAMS_SUFFIX = ".pdiparams"


def exported_model_files(prefix: Path | str) -> tuple[Path, Path] | None:
    """The exported ``(graph file, params file)`` for ``prefix``, or None if incomplete.

    Accepts both ``prefix.json`` (Paddle 3.x) and ``prefix.pdmodel`` (Paddle 2.6), each with
    ``prefix.pdiparams`` (paddle_notes §2.7).
    """
    prefix = str(prefix)
    params = Path(prefix + PARAMS_SUFFIX)
    if not params.is_file():
        return None
    for suffix in GRAPH_SUFFIXES:
        graph = Path(prefix + suffix)
        if graph.is_file():
            return graph, params
    return None


def _to_static(paddle, layer, input_spec):
    try:
        return paddle.jit.to_static(layer, input_spec=input_spec, full_graph=True)
    except TypeError:  # a Paddle without the full_graph keyword
        return paddle.jit.to_static(layer, input_spec=input_spec)


def export_network(network, prefix: Path | str, input_channels: int, conv_dim: int) -> tuple[Path, Path]:
    """Export an eval-mode network (deep supervision off) as a static graph at ``prefix``.

    The input spec is ``float32 [None, input_channels, None, ...]``: batch and spatial sizes are
    dynamic, so one export serves every patch and tile batch.

    Parameters
    ----------
    network : a :class:`pnnunet.runtime.network.PlainConvUNet` with its weights loaded
    prefix : output path without suffix; its folder is created
    input_channels : C
    conv_dim : 2 or 3

    Returns
    -------
    (graph file, params file), see :func:`exported_model_files`
    """
    paddle = import_paddle()
    network.deep_supervision = False
    network.eval()
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    spec = [paddle.static.InputSpec([None, int(input_channels)] + [None] * int(conv_dim), "float32", "x")]
    static = _to_static(paddle, network, spec)
    paddle.jit.save(static, str(prefix))
    files = exported_model_files(prefix)
    if files is None:
        raise PnnunetError(f"paddle.jit.save wrote no {'/'.join(GRAPH_SUFFIXES)} + {PARAMS_SUFFIX} at {prefix}")
    return files


def export_dir_for(checkpoint_path: Path | str) -> Path:
    """``fold_K/inference/<checkpoint stem>``: where a checkpoint's static graph is cached."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.parent / EXPORT_DIR / checkpoint_path.stem


def _export_stamp(checkpoint_path: Path, input_channels: int, conv_dim: int) -> dict:
    paddle = import_paddle()
    st = checkpoint_path.stat()
    return {"checkpoint": checkpoint_path.name, "checkpoint_mtime_ns": st.st_mtime_ns,
            "checkpoint_size": st.st_size, "paddle_version": paddle.__version__,
            "input_channels": int(input_channels), "conv_dim": int(conv_dim)}


def _cached(folder: Path, stamp: dict) -> tuple[Path, Path] | None:
    meta = folder / META_FILE
    if not meta.is_file():
        return None
    try:
        if load_json(meta) != stamp:
            return None
    except ValueError:
        return None
    return exported_model_files(folder / MODEL_STEM)


def _export_into(folder: Path, build_network: Callable[[], object], stamp: dict) -> tuple[Path, Path]:
    """Export into a temporary folder beside ``folder``, move the files in, write the stamp last."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder.parent)  # an export cut by kill -9
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=folder.parent))
    try:
        graph, params = export_network(build_network(), tmp / MODEL_STEM, stamp["input_channels"], stamp["conv_dim"])
        folder.mkdir(exist_ok=True)
        (folder / META_FILE).unlink(missing_ok=True)  # invalid while the files are replaced
        for suffix in GRAPH_SUFFIXES:
            (folder / (MODEL_STEM + suffix)).unlink(missing_ok=True)
        for f in (graph, params):
            os.replace(f, folder / f.name)
        write_json_atomic(folder / META_FILE, stamp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return exported_model_files(folder / MODEL_STEM)


_TEMP_EXPORTS: list[tempfile.TemporaryDirectory] = []  # kept alive for the process (read-only model folders)


def cached_export(checkpoint_path: Path | str, build_network: Callable[[], object], input_channels: int,
                  conv_dim: int) -> tuple[Path, Path]:
    """The static graph of a checkpoint, exported on first use (cache: :func:`export_dir_for`).

    The cache is valid while the checkpoint's mtime and size and the Paddle version equal the
    stamp in ``export_meta.json``; otherwise the network is exported again. A model folder that
    cannot be written (e.g. installed read-only) gets a temporary export for this process.

    Parameters
    ----------
    checkpoint_path : ``fold_K/checkpoint_*.pdparams``
    build_network : returns the fold's network with its weights loaded (called only to export)
    input_channels, conv_dim : see :func:`export_network`

    Returns
    -------
    (graph file, params file)
    """
    checkpoint_path = Path(checkpoint_path)
    folder = export_dir_for(checkpoint_path)
    stamp = _export_stamp(checkpoint_path, input_channels, conv_dim)
    files = _cached(folder, stamp)
    if files is not None:
        log.debug("static graph cached: %s", files[0])
        return files
    try:
        files = _export_into(folder, build_network, stamp)
        log.info("exported %s to a static graph: %s", checkpoint_path.name, files[0].parent)
        return files
    except OSError:  # read-only model folder
        tmp = tempfile.TemporaryDirectory(prefix="pnnunet-export-")
        _TEMP_EXPORTS.append(tmp)
        log.info("%s is not writable: static graph exported to %s for this run", folder, tmp.name)
        return export_network(build_network(), Path(tmp.name) / MODEL_STEM, input_channels, conv_dim)


def _device_id(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index else 0


def inference_config(graph_file: Path | str, params_file: Path | str, device: str = "cpu",
                     num_threads: int | None = None):
    """A Paddle Inference config (paddle_notes §2.7, §3.3).

    CPU: oneDNN on (``enable_onednn``, ``enable_mkldnn`` on Paddle 2.6), ``num_threads`` math
    threads (default: all cores), IR optimisation on. GPU: ``enable_use_gpu`` on the device's id.
    Never ``enable_memory_optim()``: it breaks PIR predictors on Paddle 3.3.1.
    """
    paddle = import_paddle()
    cfg = paddle.inference.Config(str(graph_file), str(params_file))
    if device.startswith("gpu"):
        cfg.enable_use_gpu(256, _device_id(device))
    else:
        cfg.disable_gpu()
        cfg.set_cpu_math_library_num_threads(int(num_threads or os.cpu_count() or 1))
        enable = getattr(cfg, "enable_onednn", None) or cfg.enable_mkldnn
        enable()
    cfg.switch_ir_optim(True)
    cfg.disable_glog_info()
    return cfg


class InferencePredictor:
    """A Paddle Inference predictor as a predict function (float32 (N, C, *P) → (N, K, *P)).

    Parameters
    ----------
    graph_file, params_file : an export (see :func:`exported_model_files`)
    device : ``cpu``, ``gpu`` or ``gpu:N``
    num_threads : CPU math threads (default: all cores)
    """

    # the predictor keeps every intermediate tensor of its graph allocated between runs (no memory
    # optimisation, see inference_config), so the sliding window leaves the heap policy alone
    keeps_buffers = True

    def __init__(self, graph_file: Path | str, params_file: Path | str, device: str = "cpu",
                 num_threads: int | None = None):
        paddle = import_paddle()
        self.graph_file = Path(graph_file)
        self._predictor = paddle.inference.create_predictor(
            inference_config(graph_file, params_file, device, num_threads))
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        self._input.reshape(list(x.shape))
        self._input.copy_from_cpu(x)
        self._predictor.run()
        return self._output.copy_to_cpu()


def eager_predict_fn(network) -> PredictFn:
    """The eager network as a predict function (eval mode, deep supervision off, no gradients):
    float32 (N, C, *P) → (N, K, *P)."""
    paddle = import_paddle()
    network.deep_supervision = False
    network.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            out = network(paddle.to_tensor(np.ascontiguousarray(x, dtype=np.float32)))
        return out.numpy()

    predict.backend = "eager"
    return predict


class _FallbackPredictFn:
    """Static predictor that switches to the eager network if a run fails (reason logged once)."""

    def __init__(self, static: PredictFn, build_network: Callable[[], object], name: str):
        self._static, self._build, self._name = static, build_network, name
        self._eager: PredictFn | None = None
        self.backend = "static"

    @property
    def keeps_buffers(self) -> bool:
        """Whether the function in use keeps its own buffers between calls (see :class:`InferencePredictor`)."""
        return self._eager is None and getattr(self._static, "keeps_buffers", False)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._eager is None:
            try:
                return self._static(x)
            except PADDLE_RUNTIME_ERRORS as e:  # a failure inside Paddle Inference: predict eagerly
                raise_if_out_of_memory(e, f"predicting a batch of {x.shape[0]} tile(s) of {tuple(x.shape[2:])}",
                                       "pnnunet_predict --tile_batch_size 1, or fewer -npp/-nps processes")
                log.warning("warning: %s: the static-graph predictor failed on input %s (%s: %s); using the eager "
                            "network instead", self._name, tuple(x.shape), type(e).__name__, str(e).strip()[:300])
                self._eager = eager_predict_fn(self._build())
                self._static = None
                self.backend = "eager"
        return self._eager(x)


def bf16_predict_fn(network) -> PredictFn | None:
    """The network with its convolutions in bfloat16 through oneDNN (CPU), or None when this CPU has
    no native bfloat16 convolutions (:func:`pnnunet.runtime.onednn.primitives.bf16_supported`).

    A plain U-Net runs as a :class:`~pnnunet.runtime.unet_inference.PlannedUNet` (oneDNN primitives on
    buffers kept between tiles: no per-tile allocation); other networks (e.g. residual encoders) run
    eagerly with bfloat16 oneDNN convolutions."""
    if not bf16_supported():
        return None
    reason = unsupported_reason(network)
    if reason is None:
        fn = PlannedUNet(network, "bf16")
        fn.backend = "bf16"
        return fn
    log.debug("bf16 prediction runs the eager network: %s", reason)
    if accelerate_convolutions(network, inference_precision="bf16") == 0:
        return None
    fn = eager_predict_fn(network)
    fn.backend = "bf16"
    return fn


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` → ``fp16`` on a GPU (float16 autocast, as upstream), ``bf16`` on a CPU with native bfloat16
    convolutions, else ``fp32``; ``fp32`` always means float32."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "fp32":
        return "fp32"
    if amp_enabled_for(device):
        if precision == "bf16":
            log.warning("warning: bfloat16 is a CPU precision; predicting on the GPU in float16")
        return "fp16"

    if bf16_supported():
        return "bf16"
    if precision == "bf16":
        log.warning("this CPU has no native bfloat16 convolutions: predicting in float32")
    return "fp32"


def make_predict_fn(build_network: Callable[[], object], checkpoint_path: Path | str, input_channels: int,
                    conv_dim: int, device: str = "cpu", use_static_graph: bool = True,
                    num_threads: int | None = None, precision: str = "fp32") -> tuple[PredictFn, str]:
    """The fastest available predict function of one fold: bfloat16 (if asked), static graph, else eager.

    Parameters
    ----------
    build_network : returns the fold's network with its weights loaded (a fresh one per call)
    checkpoint_path : the fold's checkpoint (locates and validates the export cache)
    input_channels, conv_dim : see :func:`export_network`
    device : ``cpu``, ``gpu`` or ``gpu:N``
    use_static_graph : False forces the eager network
    num_threads : CPU math threads of the predictor (default: all cores)
    precision : ``fp32``, or ``bf16`` (CPU: the eager network with bfloat16 oneDNN convolutions,
        float32 everywhere else; see :func:`resolve_precision`)

    Returns
    -------
    (predict function float32 (N, C, *P) → (N, K, *P), backend name ``"bf16"``, ``"static"`` or ``"eager"``)
    """
    name = f"{Path(checkpoint_path).parent.name}/{Path(checkpoint_path).name}"
    if precision == "bf16" and device == "cpu":
        fn = bf16_predict_fn(build_network())
        if fn is not None:
            return fn, "bf16"
    if use_static_graph:
        paddle = import_paddle()
        try:
            with paddle.utils.unique_name.guard():
                graph, params = cached_export(checkpoint_path, build_network, input_channels, conv_dim)
            predictor = InferencePredictor(graph, params, device, num_threads)
            return _FallbackPredictFn(predictor, build_network, name), "static"
        except PADDLE_RUNTIME_ERRORS as e:  # export or predictor creation failed: eager still works
            raise_if_out_of_memory(e, "exporting the network to a static graph",
                                   "free memory (fewer -npp/-nps processes), or pnnunet_predict --eager")
            log.warning("warning: %s: static-graph inference unavailable (%s: %s); using the eager network",
                        name, type(e).__name__, str(e).strip()[:300])
    return eager_predict_fn(build_network()), "eager"
