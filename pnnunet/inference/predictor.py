"""Predict a folder of images with a trained model (reference §7.1–7.6, Appendix A.3–A.4).

Pipeline per case: read + preprocess (``-npp`` background processes, the next cases prefetched
while the current one is predicted) → sliding-window logits of every fold (mirroring TTA with the
checkpoint's axes), averaged over folds (mean of the **logits**, §7.5) → export in the input's
geometry (``-nps`` background processes, overlapped with the next prediction). ``npp = nps = 0``
runs everything in this process, one step after the other.

Arrays: preprocessed data ``(C, x, y, z)`` float32 in the plans' transposed order; logits
``(K, x, y, z)`` float16 as upstream (never float64 whole-volume copies).

The output folder receives ``dataset.json``, ``plans.json`` and ``predict_args.json``; the latter
guards against mixing predictions of different models, folds or settings in one folder.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import pnnunet
from pnnunet.dataset.cases import get_inference_cases
from pnnunet.errors import PnnunetError
from pnnunet.fileio import ensure_writable_folder, load_json, remove_stale_temporaries, write_json_atomic
from pnnunet.imageio import ImageIO, reader_writer_by_name, reader_writer_for
from pnnunet.inference.case_predictor import CasePredictor
from pnnunet.inference.case_tasks import export_case, preprocess_for_inference
from pnnunet.inference.model_folder import DEFAULT_CHECKPOINT, Fold, ModelFolder, load_model_folder
from pnnunet.inference.sliding_window import accumulation_dtype as check_accumulation_dtype
from pnnunet.inference.static_graph import resolve_precision
from pnnunet.locks import hold_lock, prediction_lock
from pnnunet.parallel import call_picklable, single_thread_worker, worker_context
from pnnunet.runtime.architectures import build_network
from pnnunet.runtime.device import import_paddle, pick_device, set_cpu_threads
from pnnunet.runtime.network import load_weights

log = logging.getLogger(__name__)

PREDICT_ARGS_FILE = "predict_args.json"
# predict_args.json keys that must match for predictions to share an output folder
GUARDED_KEYS = ("model", "configuration", "folds", "checkpoint", "use_tta", "step_size")
# patches per network call (mirrored copies included) that measured fastest with the static-graph
# predictor on a 2-core CPU (Hippocampus plans, upstream_hippocampus_220): 3D 40x56x40 patches take
# 0.88 s per patch alone and 0.98-1.07 s per patch in batches of 2-16; 2D 56x40 patches 12.9 ms
# alone, 9.2 ms in batches of 4 (one tile's 4 mirrored copies). GPU: a guess, not measured.
DEFAULT_TILE_BATCH = {("cpu", 3): 1, ("cpu", 2): 4, ("gpu", 3): 8, ("gpu", 2): 8}
# logits larger than this are exported in the main process: handing them to an export worker pickles
# them (a copy on each side), which for a whole CT volume (15 outputs, 512x512x300 float16: 2.2 GiB)
# adds two whole-volume copies for the sake of an overlap that one large case does not have
MAX_HANDOFF_BYTES = 1024**3


def _pool(num_processes: int) -> ProcessPoolExecutor | None:
    if num_processes <= 0:
        return None
    return ProcessPoolExecutor(max_workers=num_processes, initializer=single_thread_worker,
                               mp_context=worker_context([preprocess_for_inference.__module__]))


def _result(future: Future, case: str):
    """A worker's result; errors name the case, a dead worker becomes a PnnunetError."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise PnnunetError(f"case '{case}': a worker process died (often: out of memory)\n  fix: rerun with fewer "
                           "background processes (-npp 1 -nps 1) and --continue_prediction") from None
    except PnnunetError as e:
        raise PnnunetError(f"case '{case}': {e}") from None


class _Prefetcher:
    """Preprocessed cases in input order; ``num_workers`` processes keep the next cases ready.

    Work is submitted on construction (one case per worker plus one), so the network can be
    prepared meanwhile. With ``num_workers == 0`` cases are preprocessed here, on iteration.
    """

    def __init__(self, cases: dict[str, list[Path]], args: tuple, num_workers: int,
                 previous_stage_files: dict[str, Path] | None = None):
        self._todo = iter(cases.items())
        self._args = args
        self._previous = previous_stage_files or {}
        self._pool = _pool(num_workers)
        self._pending: deque[tuple[str, Future]] = deque()
        if self._pool is not None:
            for _ in range(num_workers + 1):
                if not self._submit_next():
                    break

    def _submit_next(self) -> bool:
        item = next(self._todo, None)
        if item is None:
            return False
        case, files = item
        self._pending.append((case, self._pool.submit(call_picklable, preprocess_for_inference,
                                                      (files, *self._args, self._previous.get(case)))))
        return True

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, dict]]:
        if self._pool is None:
            for case, files in self._todo:
                try:
                    yield case, *preprocess_for_inference(files, *self._args, self._previous.get(case))
                except PnnunetError as e:
                    raise PnnunetError(f"case '{case}': {e}") from None
            return
        while self._pending:
            case, future = self._pending.popleft()
            data, properties = _result(future, case)
            self._submit_next()
            yield case, data, properties

    def close(self) -> None:
        if self._pool is not None:
            for _, future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)


def check_part(part_id: int, num_parts: int) -> None:
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise PnnunetError(f"-part_id {part_id} -num_parts {num_parts}: part_id must be in 0 .. num_parts-1\n"
                           "  fix: e.g. -num_parts 2 with -part_id 0 in one process and -part_id 1 in another")


def select_part(cases: dict[str, list[Path]], part_id: int, num_parts: int) -> dict[str, list[Path]]:
    """The cases of one part: sorted case ids ``[part_id::num_parts]`` (upstream's sharding rule)."""
    check_part(part_id, num_parts)
    return {c: cases[c] for c in sorted(cases)[part_id::num_parts]}


def claim_output_folder(output_folder: Path | str, args: dict) -> None:
    """Record ``args`` in ``output_folder/predict_args.json``, refusing a folder made with other settings.

    Predictions of different models, configurations, folds, checkpoints or TTA/step settings must
    never be mixed in one folder: if the folder's predict_args.json differs from ``args`` in any of
    :data:`GUARDED_KEYS` a PnnunetError names the differences.
    """
    output_folder = Path(output_folder)
    args_file = output_folder / PREDICT_ARGS_FILE
    if args_file.is_file():
        try:
            old = load_json(args_file)
        except ValueError:
            old = {}
        differing = [k for k in GUARDED_KEYS if old.get(k) != args.get(k)]
        if differing:
            detail = "; ".join(f"{k}: {old.get(k)!r} there, {args.get(k)!r} now" for k in differing)
            raise PnnunetError(f"{output_folder}: holds predictions made with other settings ({detail})\n"
                               "  fix: predict into a new output folder, or delete the old predictions "
                               f"(including {PREDICT_ARGS_FILE}) first")
    ensure_writable_folder(output_folder)
    write_json_atomic(args_file, args)


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictionSummary:
    """What :meth:`Predictor.predict_folder` did."""

    output_folder: Path
    num_cases: int  # cases in the input folder
    num_predicted: int
    num_skipped: int  # already present (--continue_prediction)
    seconds: float
    backend: str  # "bf16", "static" (Paddle Inference), "eager"; "gpu-fp16" / "gpu-fp32" on a GPU

    @property
    def seconds_per_case(self) -> float:
        return self.seconds / self.num_predicted if self.num_predicted else 0.0

    def __str__(self) -> str:
        if not self.num_predicted:
            return f"nothing to predict: all {self.num_cases} cases are already in {self.output_folder}"
        skipped = f", {self.num_skipped} already done" if self.num_skipped else ""
        return (f"predicted {self.num_predicted} of {self.num_cases} cases{skipped} in {self.seconds:.1f} s "
                f"({self.seconds_per_case:.2f} s per case, {self.backend} backend) -> {self.output_folder}")


class Predictor:
    """Predict images with the folds of one trained model (reference §7).

    Parameters
    ----------
    model : a model folder ``.../<Trainer>__<Plans>__<configuration>`` or a loaded :class:`ModelFolder`
    folds : folds to use (ints or ``"all"``); None: every fold with the checkpoint (ignored for a
        loaded ModelFolder)
    checkpoint : ``checkpoint_final`` (default), ``checkpoint_best`` or ``checkpoint_latest``
    device : ``auto``, ``cpu`` or ``gpu``
    use_tta : mirroring test-time augmentation along the checkpoint's axes (``--disable_tta``: False)
    step_size : tile overlap as a fraction of the patch (default 0.5)
    tile_batch_size : patches per network call (mirrored copies count); None: the measured default
        for the device and dimensionality (:data:`DEFAULT_TILE_BATCH`)
    use_static_graph : run exported static graphs through Paddle Inference (False: eager network)
    num_threads : CPU threads of the network (default: all cores)
    progress : tqdm bar over cases
    precision : ``auto`` (default): bfloat16 convolutions on a CPU that has them natively (as upstream
        predicts under float16 autocast on GPUs), else float32; ``fp32``; ``bf16``
    accumulation_dtype : ``float16`` (default, upstream's sliding-window accumulators: half the memory)
        or ``float32`` (exact sums; voxels covered only by the faint edge of the Gaussian keep their
        precision)
    on_progress : called with one dict per step of :meth:`predict_folder`, for a front end's progress:
        ``stage`` (``preparing``, ``preprocessing``, ``predicting``, ``exporting``, ``done``), ``case``,
        ``cases_done``, ``cases``, and while predicting ``fold``/``folds`` (1-based) and ``tile``/``tiles``

    Raises
    ------
    PnnunetError : a bad step size, and everything :func:`load_model_folder` raises
    """

    def __init__(self, model: ModelFolder | Path | str, folds: Sequence[Fold] | None = None,
                 checkpoint: str = DEFAULT_CHECKPOINT, device: str = "auto", use_tta: bool = True,
                 step_size: float = 0.5, tile_batch_size: int | None = None, use_static_graph: bool = True,
                 num_threads: int | None = None, progress: bool = True, precision: str = "auto",
                 accumulation_dtype: str = "float16", on_progress: Callable[[dict], None] | None = None):

        self.model = model if isinstance(model, ModelFolder) else load_model_folder(model, folds, checkpoint)
        plan = self.model.plan
        if not 0 < step_size <= 1:
            raise PnnunetError(f"step_size must be in (0, 1], got {step_size}\n  fix: use e.g. -step_size 0.5")
        self.plan = plan
        self.use_tta = bool(use_tta)
        self.step_size = float(step_size)
        self.use_static_graph = bool(use_static_graph)
        self.num_threads = num_threads or os.cpu_count() or 1
        self.progress = progress
        self.on_progress = on_progress
        self.device = pick_device(device)
        if self.device == "cpu":
            set_cpu_threads(self.num_threads)

        self.precision = resolve_precision(precision, self.device)
        self.tile_batch_size = int(tile_batch_size or DEFAULT_TILE_BATCH[self.device.partition(":")[0], len(plan.patch_size)])
        try:
            self.accumulation_dtype = check_accumulation_dtype(accumulation_dtype)
        except (TypeError, ValueError) as e:
            raise PnnunetError(f"accumulation_dtype {accumulation_dtype!r}: {e}") from None
        self.num_outputs = self.model.labels.num_segmentation_heads
        self._predict_fns: list | None = None
        self.backend = ("bf16" if self.precision == "bf16" else f"gpu-{self.precision}" if self.device != "cpu"
                        else "static" if use_static_graph else "eager")

    # ---- network ------------------------------------------------------------------------------
    def _network_builder(self, weights: dict):
        def build():
            paddle = import_paddle()
            with paddle.utils.unique_name.guard():
                network = build_network(self.plan.raw, self.model.num_input_channels, self.num_outputs,
                                        deep_supervision=False)
            load_weights(network, weights)
            network.eval()
            return network

        return build

    def prepare(self) -> None:
        """Export (or load the cached export of) every fold and create its predictor; idempotent."""
        if self._predict_fns is not None:
            return

        self._predict_fns = [CasePredictor(self._network_builder(fold.weights), fold.checkpoint_path,
                                           self.model.num_input_channels, self.plan.patch_size, self.num_outputs,
                                           device=self.device, precision=self.precision,
                                           use_static_graph=self.use_static_graph, num_threads=self.num_threads,
                                           tile_batch_size=self.tile_batch_size,
                                           accumulation_dtype=self.accumulation_dtype)
                             for fold in self.model.folds]
        self.backend = self.current_backend

    @property
    def current_backend(self) -> str:
        """How the folds run: ``bf16`` (eager, bfloat16 oneDNN convolutions), ``static`` (Paddle
        Inference, float32) or ``eager``; ``mixed`` if the folds differ (a static fold fell back)."""
        if self._predict_fns is None:
            return self.backend
        names = {f.backend for f in self._predict_fns}
        return names.pop() if len(names) == 1 else "mixed"

    def _report(self, stage: str, **event) -> None:
        if self.on_progress is not None:
            self.on_progress({"stage": stage, **event})

    def predict_logits(self, data: np.ndarray, on_tile: Callable[[int, int, int, int], None] | None = None
                       ) -> np.ndarray:
        """Mean over folds of the sliding-window logits of one preprocessed case (§7.3–7.5, A.3).

        Parameters
        ----------
        data : float32 (C, x, y, z), preprocessed (plans' transposed order)

        Returns
        -------
        (K, x, y, z) of ``accumulation_dtype`` (float16: summed over folds in float16, as upstream)
        on_tile : called as ``on_tile(fold, folds, tile, tiles)`` (fold 1-based) after each group of tiles
        """
        self.prepare()
        total = None
        n = len(self._predict_fns)
        for k, (fold, predict) in enumerate(zip(self.model.folds, self._predict_fns), start=1):
            tile_hook = None if on_tile is None else (lambda done, tiles, k=k: on_tile(k, n, done, tiles))
            logits = predict(data, fold.mirror_axes if self.use_tta else None, self.step_size, on_tile=tile_hook)
            if total is None:
                total = logits
            else:
                total += logits
                del logits
        if len(self._predict_fns) > 1:
            total /= np.float32(len(self._predict_fns))
        return total

    # ---- files --------------------------------------------------------------------------------
    def reader_writer(self, example_file: Path | None = None) -> ImageIO:
        """The model's reader/writer: the plans' ``image_reader_writer``, else by file ending."""
        name = self.model.plans.get("image_reader_writer")
        if name:
            return reader_writer_by_name(name)
        dj = self.model.dataset_json
        return reader_writer_for(dj["file_ending"], example_file, dj.get("overwrite_image_reader_writer"))

    def predict_args(self) -> dict:
        """The settings recorded in ``predict_args.json`` (the guarded ones: :data:`GUARDED_KEYS`)."""
        return {"model": self.model.identity, "configuration": self.model.configuration,
                "folds": [f if f == "all" else int(f) for f in self.model.fold_names],
                "checkpoint": self.model.checkpoint, "use_tta": self.use_tta, "step_size": self.step_size,
                "model_dir": str(self.model.model_dir), "trainer": self.model.trainer_name,
                "plans": self.model.plans_name, "device": self.device, "precision": self.precision,
                "pnnunet_version": pnnunet.__version__}

    def _claim_output_folder(self, output_folder: Path) -> None:
        claim_output_folder(output_folder, self.predict_args())
        write_json_atomic(output_folder / "dataset.json", self.model.dataset_json)
        write_json_atomic(output_folder / "plans.json", self.model.plans)

    def _is_done(self, output_folder: Path, case: str, save_probabilities: bool) -> bool:
        seg = output_folder / f"{case}{self.model.dataset_json['file_ending']}"
        if not seg.is_file():
            return False
        return not save_probabilities or ((output_folder / f"{case}.npz").is_file()
                                          and (output_folder / f"{case}.json").is_file())

    def predict_folder(self, input_folder: Path | str, output_folder: Path | str, save_probabilities: bool = False,
                       continue_prediction: bool = False, num_preprocessing_workers: int = 2,
                       num_export_workers: int = 2, previous_stage_predictions: Path | str | None = None,
                       part: tuple[int, int] = (0, 1)) -> PredictionSummary:
        """Predict every case of ``input_folder`` into ``output_folder`` (reference §7, ``nnUNetv2_predict``).

        Parameters
        ----------
        input_folder : images named ``CASE_XXXX{file_ending}`` (single-channel models: ``_0000`` optional)
        output_folder : gets ``CASE{file_ending}`` per case (+ ``CASE.npz``/``CASE.json`` with
            ``save_probabilities``), ``dataset.json``, ``plans.json`` and ``predict_args.json``
        save_probabilities : also write softmax (sigmoid) probabilities, needed for ensembling
        continue_prediction : skip cases whose outputs already exist
        num_preprocessing_workers : ``-npp`` background preprocessing processes (0: in this process)
        num_export_workers : ``-nps`` background export processes (0: in this process; logits above
            :data:`MAX_HANDOFF_BYTES` are always exported in this process)
        previous_stage_predictions : cascade stage only (required there): the previous stage's
            output folder, ``CASE{file_ending}`` for every case (§7.7)
        part : ``(part_id, num_parts)``: only the sorted cases ``[part_id::num_parts]`` (``-part_id`` /
            ``-num_parts``, as upstream), so that several processes or machines can share one input and
            output folder without communicating

        Returns
        -------
        PredictionSummary

        Raises
        ------
        PnnunetError : input problems (missing channel, wrong file ending, channels of different
            geometry: the message names the case), output folder of another model/settings, a
            cascade stage without (complete) previous-stage predictions
        """
        input_folder, output_folder = Path(input_folder), Path(output_folder)
        if input_folder.expanduser().resolve() == output_folder.expanduser().resolve():
            raise PnnunetError(f"the output folder {output_folder} is the input folder\n"
                               "  fix: choose a different output folder (-o)")
        dj = self.model.dataset_json
        cases = get_inference_cases(input_folder, dj["file_ending"], self.model.num_image_channels)
        cases = select_part(cases, *part)
        if not cases:
            log.info("part %d of %d has no cases (fewer cases than parts): nothing to predict", *part)
            return PredictionSummary(output_folder, 0, 0, 0, 0.0, self.current_backend)
        previous = self._previous_stage_files(cases, previous_stage_predictions)
        ensure_writable_folder(output_folder)
        with hold_lock(prediction_lock(output_folder, part), f"the output folder (part {part[0]} of {part[1]})"
                       if part[1] > 1 else "the output folder"):
            return self._predict_cases(cases, output_folder, save_probabilities, continue_prediction,
                                       num_preprocessing_workers, num_export_workers, previous)

    def _predict_cases(self, cases: dict[str, list[Path]], output_folder: Path, save_probabilities: bool,
                       continue_prediction: bool, num_preprocessing_workers: int, num_export_workers: int,
                       previous: dict[str, Path] | None) -> PredictionSummary:
        remove_stale_temporaries(output_folder)  # left by a killed run
        self._claim_output_folder(output_folder)
        todo = {c: f for c, f in cases.items()
                if not (continue_prediction and self._is_done(output_folder, c, save_probabilities))}
        if len(todo) < len(cases):
            log.info("%d of %d cases already predicted in %s: skipped", len(cases) - len(todo), len(cases),
                     output_folder)
        rw = self.reader_writer(next(iter(cases.values()))[0])
        start = time.perf_counter()
        if todo:
            self._run(todo, output_folder, rw, save_probabilities, num_preprocessing_workers, num_export_workers,
                      previous)
        summary = PredictionSummary(output_folder, len(cases), len(todo), len(cases) - len(todo),
                                    time.perf_counter() - start, self.current_backend)
        log.info("%s", summary)
        return summary

    def _previous_stage_files(self, cases: dict, folder: Path | str | None) -> dict[str, Path] | None:
        """Cascade: each case's previous-stage segmentation in ``folder`` (all must exist); else None."""
        previous = self.plan.previous_stage
        if not previous:
            if folder is not None:
                log.warning("-prev_stage_predictions ignored: %s is not a cascade stage", self.model.configuration)
            return None
        if folder is None:
            raise PnnunetError(f"configuration '{self.model.configuration}' is a cascade stage: it needs the "
                               f"predictions of '{previous}' for the same cases\n  fix: pass "
                               f"-prev_stage_predictions FOLDER (the output of pnnunet_predict -c {previous}); "
                               "pnnunet_predict without it predicts the previous stage first")
        folder = Path(folder)
        ending = self.model.dataset_json["file_ending"]
        files = {case: folder / f"{case}{ending}" for case in cases}
        missing = [c for c, f in files.items() if not f.is_file()]
        if missing:
            shown = ", ".join(f"{c}{ending}" for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise PnnunetError(f"{folder}: no {previous} prediction for {len(missing)} of {len(cases)} cases "
                               f"({shown})\n  fix: predict the same input folder with -c {previous} into it first")
        return files

    def _run(self, todo: dict[str, list[Path]], output_folder: Path, rw: ImageIO, save_probabilities: bool,
             npp: int, nps: int, previous: dict[str, Path] | None = None) -> None:
        export_args = (self.model.plans, self.model.configuration, self.model.dataset_json)
        pool = _pool(nps)
        exporting: deque[tuple[str, Future]] = deque()
        try:
            with closing(_Prefetcher(todo, (*export_args, rw), npp, previous)) as prefetcher, \
                    tqdm(total=len(todo), desc="predicting", unit="case", disable=not self.progress) as bar:
                n = len(todo)
                if npp > 0:
                    self._report("preparing", cases_done=0, cases=n)
                    self.prepare()  # export / load the networks while the first cases are preprocessed
                self._report("preprocessing", cases_done=0, cases=n)
                for i, (case, data, properties) in enumerate(prefetcher):
                    def on_tile(fold, folds, tile, tiles, case=case, i=i):
                        self._report("predicting", case=case, cases_done=i, cases=n, fold=fold, folds=folds,
                                     tile=tile, tiles=tiles)

                    on_tile(1, len(self.model.folds), 0, 0)
                    logits = self.predict_logits(data, on_tile if self.on_progress is not None else None)
                    self._report("exporting", case=case, cases_done=i, cases=n)
                    del data
                    job = (logits, properties, *export_args, output_folder / case, rw, save_probabilities)
                    if pool is None or logits.nbytes > MAX_HANDOFF_BYTES:
                        try:
                            export_case(*job)
                        except PnnunetError as e:
                            raise PnnunetError(f"case '{case}': {e}") from None
                    else:
                        exporting.append((case, pool.submit(call_picklable, export_case, job)))
                        while len(exporting) > nps:  # bound the logits waiting in memory
                            _result(exporting[0][1], exporting[0][0])
                            exporting.popleft()
                    del logits, job
                    bar.update()
                    if i + 1 < n:
                        self._report("preprocessing", cases_done=i + 1, cases=n)
                while exporting:
                    _result(exporting[0][1], exporting[0][0])
                    exporting.popleft()
                self._report("done", cases_done=n, cases=n)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

