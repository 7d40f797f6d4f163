"""The HTTP side of ``pnnunet_app`` (FastAPI): the page, the models, jobs, uploads and results.

The flow of the page: ``POST /api/jobs`` (model and folds) gives an unguessable job id; each file is
sent with ``PUT /api/jobs/{id}/upload/{relative path}`` (the body streamed to disk, counted against
the size limit); ``POST /api/jobs/{id}/start`` checks what was uploaded and queues the job; the
page polls ``GET /api/jobs/{id}`` (state, queue position, stage, tile i/N) and, once done, loads
``/api/jobs/{id}/view/{image,seg}.nii.gz`` into the viewer and offers the downloads.
Every error is a JSON ``{"error": "..."}`` in plain words; nothing a client sends stops the server.
This module never imports Paddle: predictions run in worker processes (:mod:`.jobs`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import pnnunet
from pnnunet.app.jobs import JobRunner, JobStore, worker_command
from pnnunet.app.models import find_model, list_models
from pnnunet.app.uploads import UploadError, classify_upload, safe_relative_path, save_stream, too_large
from pnnunet.errors import PnnunetError
from pnnunet.fileio import write_json_atomic

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
VIEW_FILES = ("image.nii.gz", "seg.nii.gz")
DOWNLOADS = {"segmentation": "label map", "statistics_csv": "statistics (CSV)", "statistics_json": "statistics (JSON)",
             "report_html": "report (HTML)", "report_png": "report (PNG)", "dicom_seg": "DICOM-SEG"}


@dataclass
class AppConfig:
    models_root: Path
    jobs_root: Path
    max_upload_bytes: int = 2 * 2**30
    samples: tuple[Path, ...] = ()  # images offered as "try a sample" (--demo)
    start_runner: bool = True
    worker: object = worker_command  # JobStore folder -> command line (tests pass a stand-in)


class NotFound(PnnunetError):
    pass


def create_app(config: AppConfig) -> FastAPI:
    store = JobStore(config.jobs_root)
    locks: dict[str, asyncio.Lock] = {}
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if config.start_runner:
            state["runner"] = JobRunner(store, command=config.worker)
            state["runner"].start()
        yield
        if "runner" in state:
            state["runner"].stop(kill_worker=True)

    app = FastAPI(title="pnnunet", version=pnnunet.__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store = store
    app.state.config = config
    app.state.runtime = state
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def _revalidate(request: Request, call_next):  # after an upgrade the page never runs an old script
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response

    @app.exception_handler(PnnunetError)
    async def _user_error(_: Request, e: PnnunetError):
        status = e.status if isinstance(e, UploadError) else 404 if isinstance(e, NotFound) else 400
        return JSONResponse({"error": str(e)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        what = "no such page or file" if e.status_code == 404 else str(e.detail)
        return JSONResponse({"error": f"{what}: {request.url.path}"}, status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, e: Exception):
        log.exception("request failed")
        return JSONResponse({"error": f"the server could not do this ({type(e).__name__}: {e}); it keeps running, "
                                      "please try again"}, status_code=500)

    def folder(job_id: str) -> Path:
        try:
            return store.folder(job_id)
        except PnnunetError as e:
            raise NotFound(str(e)) from None

    def wake() -> None:
        if "runner" in state:
            state["runner"].wake.set()

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    @app.get("/api/info")
    async def info():
        return {"version": pnnunet.__version__, "models_root": str(config.models_root),
                "max_upload_mb": config.max_upload_bytes / 2**20,
                "samples": [p.name for p in config.samples]}

    @app.get("/api/models")
    async def models():
        return [m.to_json() for m in await run_in_threadpool(list_models, config.models_root)]

    @app.post("/api/jobs")
    async def create_job(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise PnnunetError("the request is not JSON\n  fix: send {\"model\": ..., \"folds\": [...]}") from None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise PnnunetError("no model chosen\n  fix: pick a model")
        entry = await run_in_threadpool(find_model, config.models_root, body["model"])
        folds = body.get("folds") or entry.folds
        if not isinstance(folds, list) or any(f not in entry.folds for f in folds):
            raise PnnunetError(f"folds {folds} are not all trained for {entry.key} (trained: {entry.folds})\n"
                               "  fix: pick trained folds")
        tta = body.get("tta", True)
        if not isinstance(tta, bool):
            raise PnnunetError("'tta' must be true or false")
        job_id = store.create({"model": entry.key, "folds": folds, "tta": tta, "models_root": str(config.models_root),
                               "uploaded_bytes": 0, "files": []})
        return {"id": job_id}

    def _fail(job_id: str, message: str) -> None:
        shutil.rmtree(store.root / job_id / "upload", ignore_errors=True)
        write_json_atomic(store.root / job_id / "result.json", {"state": "failed", "message": message})

    @app.put("/api/jobs/{job_id}/upload/{name:path}")
    async def upload(job_id: str, name: str, request: Request):
        job = folder(job_id)
        rel = safe_relative_path(name)
        lock = locks.setdefault(job_id, asyncio.Lock())
        if store.status(job_id)["state"] != "uploading":
            raise PnnunetError(f"job {job_id} is not waiting for files (it is {store.status(job_id)['state']})\n"
                               "  fix: start a new job")
        used = store.request(job_id).get("uploaded_bytes", 0)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and used + int(declared) > config.max_upload_bytes:
            _fail(job_id, too_large(config.max_upload_bytes))
            raise UploadError(too_large(config.max_upload_bytes), 413)
        try:
            written = await save_stream(request.stream(), job / "upload" / rel, config.max_upload_bytes, used)
        except UploadError as e:
            _fail(job_id, str(e))
            raise
        async with lock:  # files of one job may arrive in parallel
            req = store.request(job_id)
            store.update_request(job_id, uploaded_bytes=req.get("uploaded_bytes", 0) + written,
                                 files=sorted(set(req.get("files", [])) | {str(rel)}))
        return {"saved": str(rel), "bytes": written}

    @app.post("/api/jobs/{job_id}/sample/{name}")
    async def use_sample(job_id: str, name: str):
        job = folder(job_id)
        sample = next((p for p in config.samples if p.name == name), None)
        if sample is None:
            raise NotFound(f"no sample '{name}'")
        (job / "upload").mkdir(exist_ok=True)
        await run_in_threadpool(shutil.copyfile, sample, job / "upload" / sample.name)
        store.update_request(job_id, files=[sample.name], uploaded_bytes=sample.stat().st_size)
        return {"saved": sample.name}

    @app.post("/api/jobs/{job_id}/start")
    async def start(job_id: str):
        job = folder(job_id)
        if store.status(job_id)["state"] != "uploading":
            raise PnnunetError(f"job {job_id} was already started\n  fix: start a new job")
        req = store.request(job_id)
        try:
            uploaded = await run_in_threadpool(classify_upload, job / "upload", req.get("files", []),
                                               config.max_upload_bytes)
        except UploadError as e:
            _fail(job_id, str(e))
            raise
        store.update_request(job_id, input={"kind": uploaded.kind, "path": str(uploaded.path.relative_to(job)),
                                            "name": uploaded.name})
        store.enqueue(job_id)
        wake()
        return status_of(job_id)

    def status_of(job_id: str) -> dict:
        for s in store.all():
            if s["id"] == job_id:
                return s
        raise NotFound(f"no job '{job_id}'")

    @app.get("/api/jobs")
    async def jobs():
        return await run_in_threadpool(store.all)

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str):
        folder(job_id)
        return await run_in_threadpool(status_of, job_id)

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        folder(job_id)
        return {"state": store.cancel(job_id)}

    @app.get("/api/jobs/{job_id}/view/{name}")
    async def view(job_id: str, name: str):
        path = folder(job_id) / "view" / name
        if name not in VIEW_FILES or not path.is_file():
            raise NotFound(f"job {job_id} has no {name} (yet)")
        return FileResponse(path, media_type="application/octet-stream")

    @app.get("/api/jobs/{job_id}/download/{what}")
    async def download(job_id: str, what: str):
        job = folder(job_id)
        result = store.status(job_id).get("result") or {}
        rel = (result.get("files") or {}).get(what)
        if what not in DOWNLOADS or rel is None or not (job / rel).resolve().is_relative_to(job.resolve()) \
                or not (job / rel).is_file():
            raise NotFound(f"job {job_id} has no {DOWNLOADS.get(what, what)} to download")
        return FileResponse(job / rel, filename=Path(rel).name)

    return app
