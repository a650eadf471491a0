"""The job pipeline: convert -> preprocess -> segment -> map back -> outputs -> send.

Every part it calls is passed in (:class:`Deps`), so the orchestration is tested without servers and
the Celery tasks stay thin shells. The pipeline is split into stages at the queue boundaries:

========  =====  ==========================  ===========================================================
stage     queue  steps recorded in the job   leaves in work/<job>/ (or outputs/<job>/)
========  =====  ==========================  ===========================================================
prepare   cpu    ``convert``, ``preprocess``  input_<role>.npy (model inputs), prepared.pkl (grid,
                                              transforms, brain mask), volumes.pkl (reference series)
segment   gpu    ``segment``                  labels.npy, model.json
finish    cpu    ``map_back``, ``outputs``    outputs/<job>/<role>/{seg,sr,overlay}/*.dcm
deliver   cpu    ``send`` (once per attempt)  job.deliveries
========  =====  ==========================  ===========================================================

CPU and GPU workers therefore share the spool folder (one machine, or a shared file system).
The pickles are written and read only by gliomaseg's own workers, inside the spool.

States: the node leaves a job ``queued``; ``prepare`` makes it ``running``; it ends ``delivered``,
``failed`` (a :class:`~config.errors.PermanentError`, with its reason, never retried) or
``delivery_failed`` (every retry spent; outputs kept in the spool; ``gliomaseg resend JOB``).
Every stage is idempotent: a job that already ended is left alone, and files are replaced atomically,
so a message delivered twice does no harm (output UIDs are deterministic, so a re-send replaces).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from config.errors import (
    GliomasegError,
    MissingSequenceError,
    PermanentError,
)
from config.logs import ref
from config.settings import ROLES, Peer
from worker.send import DeliveryResult, deliver_once

log = logging.getLogger(__name__)

TERMINAL_STATES = frozenset({"delivered", "failed", "delivery_failed"})
PREPARED_FILE = "prepared.pkl"
VOLUMES_FILE = "volumes.pkl"
LABELS_FILE = "labels.npy"
MODEL_FILE = "model.json"
INPUT_PREFIX = "input_"


# ---------------------------------------------------------------------------------------------
# The parts the pipeline is given (Protocols; the real ones are in default_deps / worker.tasks).


class JobStoreLike(Protocol):
    def get(self, job_id: str) -> Any: ...
    def set_state(
        self, job_id: str, state: Any, reason: str | None = None, *, expect: Any = None
    ) -> Any: ...
    def add_step(self, job_id: str, step: dict) -> None: ...
    def update(self, job_id: str, **fields: Any) -> Any: ...


class SpoolLike(Protocol):
    def series_files(self, study_uid: str, series_uid: str) -> list[Path]: ...
    def work_dir(self, job_id: str) -> Path: ...
    def outputs_dir(self, job_id: str) -> Path: ...


class Converter(Protocol):
    def __call__(self, files: Sequence[Path], work_dir: Path) -> Any: ...


class Preparer(Protocol):
    def __call__(
        self,
        volumes: Mapping[str, Any],
        *,
        reference: str,
        brain_extraction: str,
        registration: str,
    ) -> Any: ...


class Segmenter(Protocol):
    """The model: ``images`` (role -> array on one RAS grid) -> uint8 labels {0, 1, 2, 4}."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    def __call__(
        self,
        images: Mapping[str, np.ndarray],
        spacing_mm: tuple[float, float, float],
        *,
        brain_mask: np.ndarray | None,
    ) -> np.ndarray: ...


class MapBacker(Protocol):
    def __call__(self, labels: np.ndarray, prepared: Any, reference: Any) -> Any: ...


class OutputWriter(Protocol):
    def __call__(
        self,
        natives: Mapping[str, Any],
        out_dir: Path,
        *,
        model_name: str,
        model_version: str,
        references: Mapping[str, Any],
    ) -> WrittenOutputs: ...


class Sender(Protocol):
    def __call__(self, paths: Sequence[Path], peer: Peer, *, calling_ae: str) -> Any: ...


@dataclass(frozen=True)
class WrittenOutputs:
    """What the outputs step wrote: volumes (mL), a JSON-able description, and every file to send."""

    volumes_ml: dict[str, float]
    outputs: dict[str, Any]
    paths: list[Path]


@dataclass(frozen=True)
class Deps:
    convert: Converter
    prepare: Preparer
    segmenter: Callable[[], Segmenter]  # called when the segment stage runs (GPU worker only)
    map_back: MapBacker
    write_outputs: OutputWriter
    send: Sender


@dataclass(frozen=True)
class PipelineOptions:
    reference_roles: tuple[str, ...] = ("T1c",)
    preprocess_reference: str = "T1c"
    brain_extraction: str = "auto"
    registration: str = "auto"
    destinations: Mapping[str, Peer] = field(default_factory=dict)  # name -> peer, in order
    calling_ae: str = "GLIOMASEG"
    send_retries: int = 5
    send_backoff_s: float = 2.0
    send_uploads: bool = False  # web uploads are kept, not sent, unless this is true


@dataclass(frozen=True)
class DeliveryOutcome:
    """What a delivery attempt decided: done, retry ``pending`` peers in ``retry_in_s``, or gave up."""

    state: str  # "delivered", "running" (a retry is due) or "delivery_failed"
    pending: tuple[str, ...] = ()
    retry_in_s: float | None = None
    reason: str | None = None


def backoff_s(attempt: int, base_s: float, cap_s: float = 300.0) -> float:
    """Exponential backoff before retry number ``attempt + 1``: base, 2 base, 4 base, ... capped."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    return float(min(cap_s, base_s * (2**attempt)))


# ---------------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def job_state(job: Any) -> str:
    return str(getattr(job.state, "value", job.state))


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write an intermediate file under a temporary name, then rename it into place.

    Readers never see half a file. No fsync: these files only carry a job between its stages, and
    after a crash the broker redelivers the stage that writes them (about 200 MB per 1 mm study,
    whose fsync cost seconds on a busy disk).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Pipeline:
    """Runs the stages of one job against a job store and a spool, with the parts in ``deps``."""

    def __init__(
        self, store: JobStoreLike, spool: SpoolLike, deps: Deps, options: PipelineOptions
    ) -> None:
        self.store = store
        self.spool = spool
        self.deps = deps
        self.options = options

    # -- step recording ------------------------------------------------------------------------

    @contextmanager
    def step(self, job_id: str, name: str, detail: str = "") -> Iterator[dict[str, Any]]:
        """Time a step and record it in the job (``status`` ok or failed, with the reason)."""
        started = _now()
        t0 = time.perf_counter()
        info: dict[str, Any] = {"detail": detail}
        status = "ok"
        try:
            yield info
        except BaseException as exc:
            status = "failed"
            info["detail"] = str(exc) or type(exc).__name__
            raise
        finally:
            elapsed_s = round(time.perf_counter() - t0, 3)
            self.store.add_step(
                job_id,
                {
                    "step": name,
                    "started": started.isoformat(),
                    "ended": _now().isoformat(),
                    "elapsed_s": elapsed_s,
                    "status": status,
                    "detail": str(info.get("detail", "")),
                    **{k: v for k, v in info.items() if k != "detail"},
                },
            )
            log.info(
                "step %s %s",
                name,
                status,
                extra={"job_id": job_id, "step": name, "elapsed_s": elapsed_s, "status": status},
            )

    def should_run(self, job_id: str) -> bool:
        """False when the job already ended (a duplicate or late message): the stage does nothing."""
        job = self.store.get(job_id)
        state = job_state(job)
        if state in TERMINAL_STATES:
            log.info("job already %s; nothing to do", state, extra={"job_id": job_id})
            return False
        return True

    def fail(self, job_id: str, reason: str) -> None:
        self.store.set_state(job_id, "failed", reason=reason)
        log.warning("job failed: %s", reason, extra={"job_id": job_id})

    # -- stages ---------------------------------------------------------------------------------

    def claim(self, job_id: str, *, redelivered: bool = False) -> bool:
        """Move the job from ``queued`` to ``running`` (compare-and-set): True if this worker runs it.

        A job already ``running`` is taken again only by a message the broker redelivered (the
        worker that held it died); any other copy is a duplicate and is dropped, so two workers never
        process one job.
        """
        from dicom_node.jobs import StateConflictError

        if not self.should_run(job_id):
            return False
        allowed = ("queued", "running") if redelivered else ("queued",)
        try:
            self.store.set_state(job_id, "running", expect=allowed)
        except StateConflictError:
            log.info("job claimed by another message; dropping this one", extra={"job_id": job_id})
            return False
        return True

    def prepare(self, job_id: str, *, redelivered: bool = False) -> bool:
        """Convert the four series and preprocess them; False when this message has nothing to do."""
        if not self.claim(job_id, redelivered=redelivered):
            return False
        job = self.store.get(job_id)
        self.store.update(job_id, attempts=int(getattr(job, "attempts", 0) or 0) + 1)
        roles = dict(job.roles or {})
        missing = [role for role in ROLES if not roles.get(role)]
        if missing:
            found = [role for role in ROLES if roles.get(role)]
            raise MissingSequenceError(
                f"study {ref(job.study_uid)}: need T1, T1c, T2, FLAIR; found "
                f"{', '.join(found) or 'none'} (missing: {', '.join(missing)})"
            )
        work = self.spool.work_dir(job_id)
        volumes: dict[str, Any] = {}
        with self.step(job_id, "convert") as info:
            for role in ROLES:
                files = self.spool.series_files(job.study_uid, roles[role])
                if not files:
                    raise PermanentError(
                        f"{role} series {ref(roles[role])}: no instance in the spool "
                        f"(was it deleted after the study arrived?)"
                    )
                role_dir = work / "convert" / role
                role_dir.mkdir(parents=True, exist_ok=True)
                try:
                    volumes[role] = self.deps.convert(files, role_dir)
                except PermanentError as exc:
                    exc.args = (f"{role} series {ref(roles[role])}: {exc}",)
                    raise
            info["detail"] = ", ".join(f"{role}: {_describe(volumes[role])}" for role in ROLES)
        with self.step(job_id, "preprocess") as info:
            prepared = self.deps.prepare(
                volumes,
                reference=self.options.preprocess_reference,
                brain_extraction=self.options.brain_extraction,
                registration=self.options.registration,
            )
            info["detail"] = _describe_prepared(prepared)
        # The model's inputs go to .npy files (read by the segment stage only); the rest, which
        # map-back needs, to a small pickle with the reference volumes.
        images = dict(prepared.images)
        for role, array in images.items():
            _save_npy(work / f"{INPUT_PREFIX}{role}.npy", array)
        light = prepared
        if (
            dataclasses.is_dataclass(prepared)
            and not isinstance(prepared, type)
            and any(f.name == "images" for f in dataclasses.fields(prepared))
        ):
            light = dataclasses.replace(prepared, images={})
        keep = {role: volumes[role] for role in self.options.reference_roles}
        _atomic_write(
            work / VOLUMES_FILE,
            lambda fh: pickle.dump(keep, fh, protocol=pickle.HIGHEST_PROTOCOL),
        )
        state = {"prepared": light, "roles": list(images)}
        _atomic_write(
            work / PREPARED_FILE,
            lambda fh: pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL),
        )
        return True

    def segment(self, job_id: str) -> bool:
        """Run the model on the prepared images; False when the job had already ended."""
        if not self.should_run(job_id):
            return False
        work = self.spool.work_dir(job_id)
        state = self._load_prepared(work)
        prepared = state["prepared"]
        images = {role: np.load(work / f"{INPUT_PREFIX}{role}.npy") for role in state["roles"]}
        segmenter = self.deps.segmenter()
        with self.step(job_id, "segment") as info:
            labels = segmenter(
                images,
                _spacing(prepared.spacing_mm),
                brain_mask=getattr(prepared, "brain_mask", None),
            )
            labels = np.asarray(labels, dtype=np.uint8)
            counts = {
                int(v): int(n) for v, n in zip(*np.unique(labels, return_counts=True), strict=True)
            }
            info["detail"] = f"model {segmenter.name} {segmenter.version}; voxels {counts}"
            forward_s = getattr(segmenter, "forward_s", None)
            if forward_s is not None:
                info["forward_s"] = round(float(forward_s), 3)
                info["detail"] += f"; forward passes {forward_s:.2f} s"
        _atomic_write(work / LABELS_FILE, lambda fh: np.save(fh, labels))
        model = {"name": segmenter.name, "version": segmenter.version}
        _atomic_write(work / MODEL_FILE, lambda fh: fh.write(json.dumps(model)), mode="w")
        return True

    def finish(self, job_id: str) -> bool:
        """Map the labels back and write the outputs; False when the job had already ended."""
        if not self.should_run(job_id):
            return False
        work = self.spool.work_dir(job_id)
        state = self._load_prepared(work)
        state["volumes"] = self._load_prepared(work, VOLUMES_FILE)
        try:
            labels = np.load(work / LABELS_FILE)
            model = json.loads((work / MODEL_FILE).read_text())
        except FileNotFoundError as exc:
            raise PermanentError(
                f"job {job_id}: the segment stage left no labels in {work} ({exc.filename})"
            ) from exc
        natives: dict[str, Any] = {}
        with self.step(job_id, "map_back") as info:
            for role in self.options.reference_roles:
                natives[role] = self.deps.map_back(
                    labels, state["prepared"], state["volumes"][role]
                )
            info["detail"] = ", ".join(
                f"{role}: {tuple(np.asarray(n.labels).shape)}" for role, n in natives.items()
            )
        out_dir = self.spool.outputs_dir(job_id)
        with self.step(job_id, "outputs") as info:
            written = self.deps.write_outputs(
                natives,
                out_dir,
                model_name=model["name"],
                model_version=model["version"],
                references=state["volumes"],
            )
            info["detail"] = f"{len(written.paths)} files; volumes_ml {written.volumes_ml}"
        outputs = dict(written.outputs)
        outputs.setdefault("dir", str(out_dir))
        outputs["files"] = [str(p) for p in written.paths]
        outputs["model"] = model
        self.store.update(job_id, volumes_ml=written.volumes_ml, outputs=outputs)
        return True

    def deliver(
        self,
        job_id: str,
        *,
        attempt: int = 0,
        pending: Sequence[str] | None = None,
        explicit: bool = False,
    ) -> DeliveryOutcome:
        """Send the kept outputs to each destination still ``pending`` (all when None).

        Records one ``send`` step and one ``deliveries`` entry per peer. Decides: ``delivered``
        when none is left; a retry in ``backoff_s(attempt)`` seconds while transient failures remain
        and ``attempt < send_retries``; else ``delivery_failed`` with the last reason.
        A web upload is kept, not sent, unless ``send_uploads`` is set or the send is
        ``explicit`` (an operator's resend).
        """
        job = self.store.get(job_id)
        if job.source == "upload" and not (self.options.send_uploads or explicit):
            with self.step(job_id, "send") as info:
                info["detail"] = "upload: kept, not sent (outputs.send_uploads = false)"
            self.store.set_state(job_id, "delivered")
            return DeliveryOutcome(state="delivered")
        paths = output_paths(job)
        names = list(pending) if pending is not None else list(self.options.destinations)
        peers = {name: self.options.destinations[name] for name in names}
        results: list[DeliveryResult] = []
        with self.step(job_id, "send", detail=f"attempt {attempt + 1}") as info:
            results = deliver_once(paths, peers, self.deps.send, calling_ae=self.options.calling_ae)
            info["detail"] = f"attempt {attempt + 1}: " + (
                "; ".join(r.summary() for r in results) or "no destinations configured"
            )
        if results:
            job = self.store.get(job_id)
            self.store.update(
                job_id, deliveries=list(job.deliveries or []) + [r.to_json() for r in results]
            )
        failed = [r for r in results if not r.ok]
        if not failed:
            self.store.set_state(job_id, "delivered")
            return DeliveryOutcome(state="delivered")
        reason = "; ".join(r.summary() for r in failed)
        permanent = [r for r in failed if r.permanent]
        if permanent or attempt >= self.options.send_retries:
            why = (
                "rejected by the destination"
                if permanent
                else f"after {attempt + 1} attempts (outputs.send_retries = "
                f"{self.options.send_retries})"
            )
            reason = (
                f"delivery failed {why}: {reason}. Outputs are kept in "
                f"{job.outputs.get('dir', '?')}; `gliomaseg resend {job_id}` sends them again"
            )
            self.store.set_state(job_id, "delivery_failed", reason=reason)
            log.warning("delivery failed", extra={"job_id": job_id, "attempt": attempt + 1})
            return DeliveryOutcome(
                state="delivery_failed", pending=tuple(r.peer for r in failed), reason=reason
            )
        delay_s = backoff_s(attempt, self.options.send_backoff_s)
        return DeliveryOutcome(
            state="running",
            pending=tuple(r.peer for r in failed),
            retry_in_s=delay_s,
            reason=reason,
        )

    def run(self, job_id: str, *, sleep: Callable[[float], None] = time.sleep) -> str:
        """Every stage in this process (tests, benchmark): returns the final state.

        Errors end the job as the Celery tasks would: a PermanentError (or an unexpected error)
        fails it with the reason; delivery retries sleep in this process.
        """
        try:
            if not self.prepare(job_id):
                return job_state(self.store.get(job_id))
            self.segment(job_id)
            self.finish(job_id)
        except GliomasegError as exc:
            self.fail(job_id, str(exc))
            return "failed"
        attempt = 0
        outcome = self.deliver(job_id, attempt=attempt)
        while outcome.retry_in_s is not None:
            sleep(outcome.retry_in_s)
            attempt += 1
            outcome = self.deliver(job_id, attempt=attempt, pending=outcome.pending)
        return outcome.state

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _load_prepared(work: Path, name: str = PREPARED_FILE) -> Any:
        try:
            with open(work / name, "rb") as fh:
                return pickle.load(fh)
        except FileNotFoundError as exc:
            raise PermanentError(
                f"the prepare stage left nothing in {work} (was the work folder removed, or is the "
                f"spool not shared between the CPU and GPU workers?)"
            ) from exc


def _save_npy(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda fh: np.save(fh, array))


def _spacing(values: Any) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def output_paths(job: Any) -> list[Path]:
    """The files the outputs step wrote for ``job``; PermanentError if some are gone."""
    outputs = job.outputs or {}
    files = [Path(p) for p in outputs.get("files", [])]
    if not files:
        raise PermanentError(f"job {job.id} has no outputs to send (state {job_state(job)})")
    gone = [p for p in files if not p.is_file()]
    if gone:
        raise PermanentError(
            f"job {job.id}: {len(gone)} of {len(files)} output files are missing from the spool "
            f"(first: {gone[0]}); `gliomaseg retry {job.id}` computes them again"
        )
    return files


def _describe(volume: Any) -> str:
    image = getattr(volume, "image", None)
    if image is None:
        return type(volume).__name__
    try:
        size = "x".join(str(n) for n in image.GetSize())
        spacing = "x".join(f"{s:.2f}" for s in image.GetSpacing())
        return f"{size} @ {spacing} mm"
    except AttributeError:
        return type(image).__name__


def _describe_prepared(prepared: Any) -> str:
    images = getattr(prepared, "images", {}) or {}
    shape = next((tuple(a.shape) for a in images.values()), None)
    spacing = getattr(prepared, "spacing_mm", None)
    extra = getattr(prepared, "notes", None) or getattr(prepared, "steps", None)
    text = f"grid {shape} @ {spacing} mm"
    return f"{text}; {extra}" if extra else text


# ---------------------------------------------------------------------------------------------
# Composition: the real parts, imported only when a worker needs them (never torch in the parent).


def options_from(settings: Any) -> PipelineOptions:
    """The pipeline options a :class:`config.settings.Settings` describes."""
    return PipelineOptions(
        reference_roles=tuple(settings.outputs.reference_roles),
        preprocess_reference="T1c",
        brain_extraction=settings.preprocess.brain_extraction,
        registration=settings.preprocess.registration,
        destinations={name: settings.peer(name) for name in settings.outputs.destinations},
        calling_ae=settings.dicom.ae_title,
        send_retries=settings.outputs.send_retries,
        send_backoff_s=settings.outputs.send_backoff_s,
        send_uploads=settings.outputs.send_uploads,
    )


class ModelSegmenter:
    """The bundled model, loaded once per process on first use (or by :meth:`load` after fork)."""

    def __init__(self, bundle: Path, *, device: str = "auto", tta: bool = False, threads: int = 0):
        self.bundle_path = Path(bundle)
        self.device = device
        self.tta = tta
        self.threads = threads
        self._bundle: Any = None
        self.forward_s = 0.0  # time inside the network's forward passes during the last call

    def load(self) -> Any:
        if self._bundle is None:
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)
            from model.bundle import load_bundle

            t0 = time.perf_counter()
            self._bundle = load_bundle(self.bundle_path, device=self.device)
            self._time_forward_passes(self._bundle)
            log.info(
                "model loaded",
                extra={
                    "model": getattr(self._bundle, "name", "?"),
                    "version": getattr(self._bundle, "version", "?"),
                    "elapsed_s": round(time.perf_counter() - t0, 3),
                    "pid": os.getpid(),
                },
            )
        return self._bundle

    def _time_forward_passes(self, bundle: Any) -> None:
        """Add up the time spent in the network's forward passes (``forward_s`` of a call)."""
        network = getattr(bundle, "network", None)
        if network is None or not hasattr(network, "register_forward_hook"):
            return
        started: list[float] = []

        def before(*_: Any) -> None:
            started.append(time.perf_counter())

        def after(*_: Any) -> None:
            if started:
                if str(getattr(bundle, "device", "cpu")).startswith("cuda"):
                    import torch

                    torch.cuda.synchronize()
                self.forward_s += time.perf_counter() - started.pop()

        network.register_forward_pre_hook(before)
        network.register_forward_hook(after)

    @property
    def name(self) -> str:
        return str(self.load().name)

    @property
    def version(self) -> str:
        return str(self.load().version)

    def __call__(
        self,
        images: Mapping[str, np.ndarray],
        spacing_mm: tuple[float, float, float],
        *,
        brain_mask: np.ndarray | None,
    ) -> np.ndarray:
        from model.inference import predict_case

        bundle = self.load()
        self.forward_s = 0.0
        return predict_case(bundle, images, spacing_mm, brain_mask=brain_mask, tta=self.tta)


def write_output_files(
    natives: Mapping[str, Any],
    out_dir: Path,
    *,
    model_name: str,
    model_version: str,
    references: Mapping[str, Any] | None = None,
    seg: bool = True,
    sr: bool = True,
    overlay: bool = True,
) -> WrittenOutputs:
    """Build SEG, SR and overlay for each reference role and write them under ``out_dir/<role>/``.

    Volumes (mL) come from the first reference role (T1c by default). Files are named from their
    SOPInstanceUID and replaced atomically, so the same job written twice gives the same files.
    ``references`` (role -> converted Volume) supplies the overlay's grey levels when the source
    datasets carry no pixels.
    """
    from worker.outputs.overlay import build_overlay
    from worker.outputs.seg import build_seg
    from worker.outputs.sr import build_sr
    from worker.outputs.volumes import region_volumes_ml
    from worker.outputs.writer import write_datasets

    paths: list[Path] = []
    series: dict[str, dict[str, str]] = {}
    volumes_ml: dict[str, float] = {}
    for i, (role, native) in enumerate(natives.items()):
        role_dir = out_dir / role
        role_volumes = {
            k: float(v) for k, v in region_volumes_ml(native.labels, native.datasets).items()
        }
        if i == 0:
            volumes_ml = role_volumes
        series[role] = {}
        seg_ds = build_seg(native, model_name=model_name, model_version=model_version)
        if seg:
            paths += write_datasets([seg_ds], role_dir / "seg")
            series[role]["seg"] = str(seg_ds.SeriesInstanceUID)
        if sr:
            sr_ds = build_sr(
                role_volumes,
                seg_ds,
                native.datasets,
                model_name=model_name,
                model_version=model_version,
            )
            paths += write_datasets([sr_ds], role_dir / "sr")
            series[role]["sr"] = str(sr_ds.SeriesInstanceUID)
        if overlay:
            reference = (references or {}).get(role)
            sc = build_overlay(
                native.labels,
                native.datasets,
                model_name=model_name,
                model_version=model_version,
                images=_reference_pixels(native, reference),
                volumes_ml=role_volumes,
            )
            paths += write_datasets(sc, role_dir / "overlay")
            if sc:
                series[role]["overlay"] = str(sc[0].SeriesInstanceUID)
    return WrittenOutputs(
        volumes_ml=volumes_ml, outputs={"dir": str(out_dir), "series": series}, paths=paths
    )


def _reference_pixels(native: Any, reference: Any) -> np.ndarray | None:
    """(n_slices, Rows, Columns) grey levels in ``native.datasets`` order, when they lack pixels."""
    datasets = list(native.datasets)
    if not datasets or "PixelData" in datasets[0] or reference is None:
        return None
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(reference.image)  # (z, y, x) = slice, row, column
    index = {str(uid): k for k, uid in enumerate(reference.sop_uids)}
    order = [index[str(ds.SOPInstanceUID)] for ds in datasets]
    return array[order].astype(np.float32)


def default_deps(settings: Any, segmenter: ModelSegmenter | None = None) -> Deps:
    """The real parts, configured from ``settings`` (imports happen when each part is first used)."""

    def convert(files: Sequence[Path], work_dir: Path) -> Any:
        from worker.convert import convert_series

        return convert_series(files, work_dir)

    def prepare(volumes: Mapping[str, Any], **kw: Any) -> Any:
        from worker.preprocess import prepare as prepare_volumes

        return prepare_volumes(volumes, **kw)

    def map_back(labels: np.ndarray, prepared: Any, reference: Any) -> Any:
        from worker.mapback import map_back as map_labels_back

        return map_labels_back(labels, prepared, reference)

    def write_outputs(natives: Mapping[str, Any], out_dir: Path, **kw: Any) -> WrittenOutputs:
        return write_output_files(
            natives,
            out_dir,
            seg=settings.outputs.seg,
            sr=settings.outputs.sr,
            overlay=settings.outputs.overlay,
            **kw,
        )

    def send(paths: Sequence[Path], peer: Peer, *, calling_ae: str) -> Any:
        from dicom_node.scu import send as scu_send

        return scu_send(paths, peer, calling_ae=calling_ae)

    model = segmenter or ModelSegmenter(
        settings.model.bundle,
        device=settings.model.device,
        tta=settings.model.tta,
        threads=settings.model.threads,
    )
    return Deps(
        convert=convert,
        prepare=prepare,
        segmenter=lambda: model,
        map_back=map_back,
        write_outputs=write_outputs,
        send=send,
    )
