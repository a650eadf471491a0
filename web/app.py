"""The FastAPI application: REST API under /api, pages, /metrics, /healthz.

``create_app(settings)`` is what ``gliomaseg web`` and ``gliomaseg serve`` run. Everything but
``/healthz`` needs the bearer token (``GLIOMASEG_WEB__TOKEN``; see :mod:`web.auth`). Pages are
server-rendered Jinja2 templates with small plain scripts from /static: nothing is fetched from
the internet (the hospital network is offline).
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from config.errors import GliomasegError, PermanentError, TransientError
from config.settings import Settings
from web import auth, views
from web.backend import Actions, ActionUnavailable, DefaultActions, open_store
from web.metrics import JobsCollector, render
from web.viewer import LABELS_FILE, REFERENCE_FILE, Plane, VolumeCache, cut, png_bytes

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 25


# -- API models (they document the API in /openapi.json) ------------------------------------------
class JobList(BaseModel):
    total: int = Field(description="jobs matching the filters")
    limit: int
    offset: int
    jobs: list[dict[str, Any]] = Field(description="Job.to_json() of each job, newest first")


class JobDetail(BaseModel):
    job: dict[str, Any]
    has_viewer: bool = Field(description="reference.nii.gz and labels.nii.gz are in the outputs")
    has_labels: bool
    n_dicom_outputs: int


class Patient(BaseModel):
    patient_name: str
    patient_id: str
    study_date: str
    study_description: str


class EchoResult(BaseModel):
    peer: str
    ok: bool
    elapsed_s: float | None = None
    detail: str = ""


class PeerInfo(BaseModel):
    name: str
    ae_title: str
    host: str
    port: int
    destination: bool


class ActionResult(BaseModel):
    job: dict[str, Any]
    detail: str


class Health(BaseModel):
    status: str
    database: str


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "?"


def create_app(
    settings: Settings,
    *,
    store: Any | None = None,
    actions: Actions | None = None,
    token: str | None = None,
) -> FastAPI:
    """Build the web application.

    Parameters
    ----------
    settings
        The service settings (``web`` section for the token; spool, jobs, queue, peers).
    store
        A ``dicom_node.jobs.JobStore``; by default the one at ``settings.database_url``.
    actions
        Retry / resend / enqueue / echo; by default :class:`web.backend.DefaultActions`.
    token
        Overrides the configured token (tests). Without any, one is generated (see web.auth).
    """
    from dicom_node.spool import Spool

    spool = Spool(settings.spool.root)
    configured = token or (settings.web.token.get_secret_value() if settings.web.token else None)
    app = FastAPI(
        title="gliomaseg",
        version=_version(),
        description=(
            "Dashboard and REST API of gliomaseg. Every endpoint except /healthz needs "
            "`Authorization: Bearer <GLIOMASEG_WEB__TOKEN>` (or the login cookie)."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.token = auth.resolve_token(configured, spool.root)
    app.state.store = store if store is not None else open_store(settings)
    app.state.spool = spool
    app.state.actions = (
        actions if actions is not None else DefaultActions(settings, app.state.store)
    )
    app.state.volumes = VolumeCache()
    app.state.collector = JobsCollector(
        app.state.store,
        settings.queue.broker_url,
        [settings.queue.cpu_queue, settings.queue.gpu_queue],
    )
    try:
        from web.configaudit import record_config

        record_config(app.state.store, settings.masked(), process="web")
    except Exception:  # the dashboard still starts; the failure is logged
        log.exception("could not record the configuration in the audit trail")
    build_lock = threading.Lock()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["fmt_duration"] = views.fmt_duration
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.exception_handler(auth.LoginRequired)
    async def _login(request: Request, exc: auth.LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={_quote(exc.next_url)}", status_code=303)

    @app.exception_handler(PermanentError)
    async def _bad(request: Request, exc: PermanentError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(TransientError)
    async def _unavailable(request: Request, exc: TransientError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    api = [Depends(auth.require_token)]
    page = [Depends(auth.require_login)]

    def store_() -> Any:
        return app.state.store

    def get_job(job_id: str) -> Any:
        try:
            return app.state.store.get(job_id)
        except (KeyError, GliomasegError):
            raise HTTPException(404, detail=f"no job {job_id!r}") from None

    def outputs_dir(job_id: str) -> Path:
        return spool.root / "outputs" / job_id

    def dicom_outputs(job_id: str) -> list[Path]:
        d = outputs_dir(job_id)
        return sorted(d.rglob("*.dcm")) if d.is_dir() else []

    def viewer_dir(job: Any) -> Path | None:
        """Where the job's viewer NIfTI files are: the worker's outputs, else the web's cache."""
        for d in (outputs_dir(job.id), spool.root / "web" / job.id):
            if (d / LABELS_FILE).is_file() and (d / REFERENCE_FILE).is_file():
                return d
        return None

    def reference_files(job: Any) -> list[Path]:
        for role in settings.outputs.reference_roles:
            uid = (job.roles or {}).get(role)
            if uid:
                return spool.series_files(job.study_uid, uid)
        return []

    def built_viewer_dir(job: Any) -> Path | None:
        """viewer_dir, else rebuilt once from the reference series and the DICOM-SEG (fromdicom)."""
        from web.fromdicom import write_viewer_files

        found = viewer_dir(job)
        cache = spool.root / "web" / job.id
        if found is not None and found != cache:
            return found  # the worker's own files
        seg = seg_of(job.id)
        if found is not None and (
            seg is None or seg.stat().st_mtime <= (cache / LABELS_FILE).stat().st_mtime
        ):
            return found
        files = reference_files(job)
        if seg is None or not files:
            return None
        with build_lock:
            try:
                write_viewer_files(files, seg, cache)
            except Exception as exc:  # e.g. a series the conversion rejects: no viewer, say why
                log.warning(
                    "viewer volume could not be rebuilt from the DICOM outputs",
                    extra={"job_id": job.id, "error": type(exc).__name__},
                )
                return None
        return cache

    seg_cache: dict[str, tuple[float, Path | None]] = {}

    def seg_of(job_id: str) -> Path | None:
        """The job's DICOM-SEG output, looked up again only when its outputs folder changes."""
        from web.fromdicom import find_seg

        d = outputs_dir(job_id)
        try:
            stamp = max(
                [d.stat().st_mtime] + [p.stat().st_mtime for p in d.iterdir() if p.is_dir()]
            )
        except FileNotFoundError:
            return None
        cached = seg_cache.get(job_id)
        if cached is None or cached[0] != stamp:
            cached = (stamp, find_seg(dicom_outputs(job_id)))
            seg_cache[job_id] = cached
        return cached[1]

    def detail(job: Any) -> JobDetail:
        n_dicom = len(dicom_outputs(job.id))
        ready = viewer_dir(job) is not None
        return JobDetail(
            job=views.job_json(job),
            has_viewer=ready or (n_dicom > 0 and bool(reference_files(job))),
            has_labels=ready or (n_dicom > 0 and bool(reference_files(job))),
            n_dicom_outputs=n_dicom,
        )

    def patient(job: Any) -> Patient:
        import pydicom

        tags = ["PatientName", "PatientID", "StudyDate", "StudyDescription"]
        dirs = []
        for uid in (job.roles or {}).values():
            if uid:
                dirs.append(spool.series_dir(job.study_uid, uid))
        dirs += spool.study_series_dirs(job.study_uid)
        for d in dirs:
            for f in sorted(d.glob("*.dcm"))[:1]:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags)
                return Patient(
                    patient_name=str(ds.get("PatientName", "")).replace("^", " ").strip(),
                    patient_id=str(ds.get("PatientID", "")),
                    study_date=str(ds.get("StudyDate", "")),
                    study_description=str(ds.get("StudyDescription", "")),
                )
        return Patient(patient_name="", patient_id="", study_date="", study_description="")

    def audit_events(job_id: str) -> list[dict[str, Any]]:
        events = app.state.store.audit_events(job_id=job_id)
        return [_plain(e) for e in events]

    def list_jobs(state, calling_ae, since, until, limit, offset) -> JobList:
        filters = dict(
            state=state or None,
            calling_ae=calling_ae or None,
            since=views.parse_day(since, name="since"),
            until=views.parse_day(until, name="until", end=True),
        )
        if state and state not in views.STATE_HELP:
            raise PermanentError(
                f"state must be one of {', '.join(views.STATE_HELP)}; got {state!r}"
            )
        jobs = app.state.store.list(**filters, limit=limit, offset=offset)
        total = app.state.store.count(**filters)
        return JobList(
            total=total, limit=limit, offset=offset, jobs=[views.job_json(j) for j in jobs]
        )

    # -- health, metrics, OpenAPI ---------------------------------------------------------------
    @app.get(
        "/healthz",
        response_model=Health,
        tags=["operations"],
        summary="Liveness and database check",
    )
    def healthz() -> JSONResponse:
        try:
            app.state.store.count()
            return JSONResponse({"status": "ok", "database": "ok"})
        except Exception as exc:
            return JSONResponse(
                {"status": "error", "database": type(exc).__name__}, status_code=503
            )

    @app.get("/metrics", dependencies=api, tags=["operations"], summary="Prometheus metrics",
             response_class=Response)  # fmt: skip
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(render(app.state.collector), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", dependencies=api, include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    # -- jobs API -----------------------------------------------------------------------------------
    @app.get("/api/jobs", response_model=JobList, dependencies=api, tags=["jobs"],
             summary="List jobs, newest first, with filters and paging")  # fmt: skip
    def api_jobs(
        state: Annotated[str | None, Query(description="one JobState")] = None,
        calling_ae: Annotated[str | None, Query(description="calling AE title")] = None,
        since: Annotated[str | None, Query(description="first day, YYYY-MM-DD (UTC)")] = None,
        until: Annotated[str | None, Query(description="last day, YYYY-MM-DD (UTC)")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> JobList:
        return list_jobs(state, calling_ae, since, until, limit, offset)

    @app.get("/api/jobs/{job_id}", response_model=JobDetail, dependencies=api, tags=["jobs"],
             summary="One job: state, steps, classification, volumes, outputs")  # fmt: skip
    def api_job(job_id: str) -> JobDetail:
        return detail(get_job(job_id))

    @app.get("/api/jobs/{job_id}/patient", response_model=Patient, dependencies=api, tags=["jobs"],
             summary="Patient name and ID, read from the spooled headers (never logged)")  # fmt: skip
    def api_patient(job_id: str) -> Patient:
        return patient(get_job(job_id))

    @app.get("/api/jobs/{job_id}/audit", dependencies=api, tags=["jobs"],
             summary="The job's audit trail (who sent what, each step, each delivery)")  # fmt: skip
    def api_audit(job_id: str) -> list[dict[str, Any]]:
        get_job(job_id)
        return audit_events(job_id)

    @app.post("/api/jobs/{job_id}/retry", response_model=ActionResult, dependencies=api,
              tags=["jobs"], summary="Run a failed job again")  # fmt: skip
    def api_retry(job_id: str, request: Request) -> ActionResult:
        return act(job_id, "retry", request)

    @app.post("/api/jobs/{job_id}/resend", response_model=ActionResult, dependencies=api,
              tags=["jobs"], summary="Send the job's kept outputs to the destinations again")  # fmt: skip
    def api_resend(job_id: str, request: Request) -> ActionResult:
        return act(job_id, "resend", request)

    def act(job_id: str, action: str, request: Request) -> ActionResult:
        get_job(job_id)
        try:
            getattr(app.state.actions, action)(job_id)
        except ActionUnavailable as exc:
            raise HTTPException(501, detail=str(exc)) from None
        except PermanentError as exc:
            raise HTTPException(409, detail=str(exc)) from None
        app.state.store.audit(
            f"web_{action}", job_id=job_id, detail={"client_ip": _client_ip(request)}
        )
        log.info("job action from the web", extra={"job_id": job_id, "action": action})
        return ActionResult(job=views.job_json(get_job(job_id)), detail=f"{action} requested")

    # -- viewer and downloads -----------------------------------------------------------------------
    def volume(job_id: str) -> Any:
        d = built_viewer_dir(get_job(job_id))
        if d is None:
            raise HTTPException(404, detail="the job has no segmentation to show (yet)")
        try:
            return app.state.volumes.get(d)
        except FileNotFoundError as exc:
            raise HTTPException(404, detail=str(exc)) from None

    @app.get("/api/jobs/{job_id}/viewer", dependencies=api, tags=["viewer"],
             summary="Slice counts, pixel sizes and regions of the job's viewer volume")  # fmt: skip
    def api_viewer(job_id: str) -> dict[str, Any]:
        return volume(job_id).describe()

    @app.get("/api/jobs/{job_id}/slices/{plane}/{index}.png", dependencies=api, tags=["viewer"],
             response_class=Response, responses={200: {"content": {"image/png": {}}}},
             summary="One slice as an 8-bit PNG: the reference image, or the label values 0/1/2/4")  # fmt: skip
    def api_slice(
        job_id: str,
        plane: Plane,
        index: int,
        layer: Annotated[str, Query(pattern="^(image|labels)$")] = "image",
    ) -> Response:
        vol = volume(job_id)
        data = vol.image_u8 if layer == "image" else vol.labels
        return Response(
            png_bytes(cut(data, plane, index)),
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=300"},
        )

    @app.get("/api/jobs/{job_id}/labels.nii.gz", dependencies=api, tags=["downloads"],
             response_class=FileResponse, summary="The label map NIfTI (0, 1 necrotic, 2 edema, 4 enhancing)")  # fmt: skip
    def api_labels(job_id: str) -> FileResponse:
        d = built_viewer_dir(get_job(job_id))
        if d is None:
            raise HTTPException(404, detail="the job has no label map (yet)")
        path = d / LABELS_FILE
        return FileResponse(path, media_type="application/gzip", filename=f"{job_id}-labels.nii.gz")

    @app.get("/api/jobs/{job_id}/outputs.zip", dependencies=api, tags=["downloads"],
             response_class=StreamingResponse, summary="The DICOM outputs (SEG, SR, overlay) as a zip")  # fmt: skip
    def api_outputs_zip(job_id: str) -> StreamingResponse:
        get_job(job_id)
        files = dicom_outputs(job_id)
        if not files:
            raise HTTPException(404, detail="the job has no DICOM outputs (yet)")
        base = outputs_dir(job_id)
        return StreamingResponse(
            _zip_stream(files, base),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{job_id}-dicom.zip"'},
        )

    # -- uploads ------------------------------------------------------------------------------------
    @app.post("/api/uploads", response_model=JobDetail, status_code=201, dependencies=api,
              tags=["jobs"], summary="Upload a zip of DICOM files or the four NIfTI volumes of a case")  # fmt: skip
    def api_upload(
        request: Request,
        files: Annotated[
            list[UploadFile],
            File(
                description="a .zip of DICOM files (or of a BraTS case folder), or four .nii.gz named *_t1, *_t1ce, *_t2, *_flair"
            ),
        ],
    ) -> JobDetail:
        from web.uploads import ingest

        with tempfile.TemporaryDirectory(dir=spool.tmp) as tmp:
            saved = []
            for i, f in enumerate(files):
                target = Path(tmp) / f"{i}.bin"
                with open(target, "wb") as out:
                    while chunk := f.file.read(1 << 20):
                        out.write(chunk)
                saved.append((f.filename or f"file{i}", target))
            job = ingest(
                saved, spool=spool, store=app.state.store, actions=app.state.actions,
                rules=settings.classify.rules, client_ip=_client_ip(request),
            )  # fmt: skip
        return detail(job)

    # -- configuration and peers --------------------------------------------------------------------
    @app.get("/api/config", dependencies=api, tags=["configuration"],
             summary="The effective configuration, secrets masked (read-only)")  # fmt: skip
    def api_config() -> dict[str, Any]:
        return settings.masked()

    def peers() -> list[PeerInfo]:
        return [
            PeerInfo(
                name=name,
                ae_title=p.ae_title,
                host=p.host,
                port=p.port,
                destination=name in settings.outputs.destinations,
            )  # fmt: skip
            for name, p in sorted(settings.peers.items())
        ]

    @app.get("/api/peers", response_model=list[PeerInfo], dependencies=api, tags=["configuration"],
             summary="Configured DICOM peers")  # fmt: skip
    def api_peers() -> list[PeerInfo]:
        return peers()

    @app.post("/api/peers/{name}/echo", response_model=EchoResult, dependencies=api,
              tags=["configuration"], summary="C-ECHO a configured peer")  # fmt: skip
    def api_echo(name: str, request: Request) -> EchoResult:
        if name.upper() not in settings.peers:
            raise HTTPException(
                404, detail=f"no peer named {name!r}; configured: {sorted(settings.peers)}"
            )
        try:
            elapsed = app.state.actions.echo(name)
            result = EchoResult(
                peer=name.upper(), ok=True, elapsed_s=round(elapsed, 4), detail="Success"
            )
        except GliomasegError as exc:
            result = EchoResult(peer=name.upper(), ok=False, detail=str(exc))
        app.state.store.audit(
            "web_echo",
            detail={"peer": name.upper(), "ok": result.ok, "client_ip": _client_ip(request)},
        )
        return result

    # -- pages --------------------------------------------------------------------------------------
    def render_page(request: Request, name: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"settings": settings, **context})

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return render_page(request, "login.html", next=_safe_next(next), error=None)

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
    ) -> Response:
        import hmac

        if not hmac.compare_digest(token.strip().encode(), app.state.token.encode()):
            form = render_page(
                request, "login.html", next=_safe_next(next), error="That token is not valid."
            )
            form.status_code = 401
            return form
        resp = RedirectResponse(_safe_next(next), status_code=303)
        resp.set_cookie(auth.COOKIE, app.state.token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", max_age=12 * 3600)  # fmt: skip
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(auth.COOKIE)
        return resp

    @app.get("/", include_in_schema=False, dependencies=page)
    def jobs_page(request: Request) -> HTMLResponse:
        return render_page(request, "jobs.html", states=list(views.STATE_HELP), page_size=PAGE_SIZE)

    @app.get("/jobs/{job_id}", include_in_schema=False, dependencies=page)
    def job_page(request: Request, job_id: str) -> HTMLResponse:
        job = get_job(job_id)
        d = detail(job)
        data = d.job
        events = audit_events(job_id)
        return render_page(
            request, "job.html", job=data, d=d, patient=patient(job),
            timeline=views.timeline(data, events), volumes=views.volume_rows(data.get("volumes_ml") or {}),
            series=views.classification_rows(data), events=events, state_help=views.STATE_HELP,
        )  # fmt: skip

    @app.get("/upload", include_in_schema=False, dependencies=page)
    def upload_page(request: Request) -> HTMLResponse:
        return render_page(request, "upload.html")

    @app.get("/config", include_in_schema=False, dependencies=page)
    def config_page(request: Request) -> HTMLResponse:
        history = app.state.store.audit_events(event="config", limit=20)
        return render_page(request, "config.html", config=settings.masked(), history=history[::-1])

    @app.get("/peers", include_in_schema=False, dependencies=page)
    def peers_page(request: Request) -> HTMLResponse:
        return render_page(request, "peers.html", peers=peers())

    @app.get("/api-docs", include_in_schema=False, dependencies=page)
    def docs_page(request: Request) -> HTMLResponse:
        return render_page(request, "apidocs.html", endpoints=_endpoints(app.openapi()))

    _ = store_
    return app


def _plain(event: Any) -> dict[str, Any]:
    data = dict(event) if isinstance(event, dict) else event.model_dump(mode="json")
    for k, v in list(data.items()):
        if isinstance(v, datetime):
            data[k] = v.isoformat()
    return data


class _Chunks(io.RawIOBase):
    """An unseekable sink for zipfile: what was written so far, taken in pieces."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _zip_stream(files: list[Path], base: Path, chunk: int = 2**20) -> Iterator[bytes]:
    """The zip, streamed as it is made: memory stays about one chunk, whatever the outputs weigh."""
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            info = zipfile.ZipInfo.from_file(f, f.relative_to(base).as_posix())
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(f, "rb") as src, zf.open(info, "w") as dst:
                while data := src.read(chunk):
                    dst.write(data)
                    if sink.parts:
                        yield sink.take()
            yield sink.take()
    yield sink.take()


def _safe_next(value: str) -> str:
    """Only local paths after login (no open redirect)."""
    return value if value.startswith("/") and not value.startswith("//") else "/"


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _endpoints(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            params = [
                {"name": p["name"], "in": p["in"], "required": p.get("required", False),
                 "description": p.get("description", ""),
                 "type": p.get("schema", {}).get("type", "") or "/".join(
                     s.get("type", "") for s in p.get("schema", {}).get("anyOf", []))}
                for p in op.get("parameters", [])
            ]  # fmt: skip
            body = (
                "multipart/form-data"
                if "multipart/form-data" in str(op.get("requestBody", ""))
                else ""
            )
            out.append({"method": method.upper(), "path": path, "summary": op.get("summary", ""),
                        "tag": (op.get("tags") or [""])[0], "params": params, "body": body})  # fmt: skip
    return out


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gliomaseg")
    except Exception:
        return "0"
