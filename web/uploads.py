"""Uploads from the browser: a zip of DICOM files, or four NIfTI volumes (a BraTS-style case).

Both end as DICOM instances in the spool and a job with ``source="upload"`` queued by task name
exactly as the node queues a received study, so an upload runs through the same pipeline.
NIfTI volumes are first written as an MR study by ``dicom_node.studygen.write_study``.
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.errors import PermanentError, TransientError
from config.logs import ref

log = logging.getLogger(__name__)

UPLOAD_AE = "WEB-UPLOAD"
MAX_UNZIPPED_BYTES = 8 * 2**30  # a zip that would expand beyond this is refused (zip bomb)
NIFTI_SUFFIXES = (".nii.gz", ".nii")

# last token of a NIfTI file name -> role (BraTS 2018-2021 and BraTS 2023 spellings)
_ROLE_TOKENS: dict[str, str | None] = {
    "flair": "FLAIR", "t2f": "FLAIR", "t2flair": "FLAIR",
    "t1ce": "T1c", "t1c": "T1c", "t1gd": "T1c", "t1post": "T1c",
    "t2": "T2", "t2w": "T2",
    "t1": "T1", "t1n": "T1", "t1w": "T1",
    "seg": None, "label": None, "labels": None, "mask": None,
}  # fmt: skip
ROLES = ("T1", "T1c", "T2", "FLAIR")


def is_nifti(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def _stem(name: str) -> str:
    base = Path(name).name.lower()
    for suffix in NIFTI_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def roles_from_names(names: Sequence[str]) -> dict[str, str]:
    """Map role -> file name from BraTS-style names (``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair``).

    Label maps (``*_seg``) are ignored. Raises PermanentError naming the files when a role is
    missing, doubled, or a name is not recognised.
    """
    found: dict[str, list[str]] = {r: [] for r in ROLES}
    unknown = []
    for name in names:
        token = re.split(r"[_\-. ]", _stem(name))[-1]
        if token not in _ROLE_TOKENS:
            unknown.append(Path(name).name)
            continue
        role = _ROLE_TOKENS[token]
        if role is not None:
            found[role].append(Path(name).name)
    problems = []
    if unknown:
        problems.append(
            f"names not recognised (expected to end in _t1, _t1ce, _t2 or _flair): {', '.join(unknown)}"
        )
    for role, files in found.items():
        if not files:
            problems.append(f"no {role} volume")
        elif len(files) > 1:
            problems.append(f"{role} given twice ({', '.join(files)})")
    if problems:
        raise PermanentError(
            "a NIfTI upload needs exactly four volumes, T1, T1c, T2 and FLAIR: "
            + "; ".join(problems)
        )
    return {role: files[0] for role, files in found.items()}


def unpack(uploads: Sequence[tuple[str, Path]], dest: Path) -> list[Path]:
    """Copy uploaded files into ``dest``, expanding zips; returns the plain files.

    Zip members are written under numbered folders with only their base name kept, so no
    member name can leave ``dest`` (zip slip) and two members with one name do not collide.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for i, (name, path) in enumerate(uploads):
        if name.lower().endswith(".zip"):
            try:
                zf = zipfile.ZipFile(path)
            except zipfile.BadZipFile as exc:
                raise PermanentError(f"{Path(name).name} is not a valid zip file: {exc}") from None
            with zf:
                members = [
                    m for m in zf.infolist() if not m.is_dir() and "__MACOSX" not in m.filename
                ]
                total = sum(m.file_size for m in members)
                if total > MAX_UNZIPPED_BYTES:
                    raise PermanentError(
                        f"{Path(name).name} would expand to {total / 2**30:.1f} GiB; the limit is "
                        f"{MAX_UNZIPPED_BYTES / 2**30:.0f} GiB"
                    )
                for j, member in enumerate(members):
                    base = Path(member.filename).name
                    if not base or base.startswith("."):
                        continue
                    target = dest / f"{i}-{j}" / base
                    target.parent.mkdir()
                    with zf.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    out.append(target)
        else:
            target = dest / f"{i}" / (Path(name).name or "upload")
            target.parent.mkdir()
            shutil.copyfile(path, target)
            out.append(target)
    if not out:
        raise PermanentError("the upload holds no files")
    return out


def nifti_to_dicom(files: Mapping[str, Path], out_dir: Path, *, patient_id: str) -> list[Path]:
    """Write the four NIfTI volumes (role -> path) as one MR study; returns the instance files."""
    import nibabel as nib
    import numpy as np

    from dicom_node import studygen

    volumes: dict[str, tuple[Any, Any]] = {}
    for role, path in files.items():
        try:
            img: Any = nib.load(path)
            data = np.asanyarray(img.dataobj)
        except Exception as exc:
            raise PermanentError(
                f"{path.name} ({role}) is not a readable NIfTI volume: {exc}"
            ) from None
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise PermanentError(
                f"{path.name} ({role}) must be a 3D volume; got shape {data.shape}"
            )
        volumes[role] = (data, img.affine)
    written = studygen.write_study(
        volumes, out_dir, patient_name="UPLOAD^ANONYMOUS", patient_id=patient_id
    )
    return [p for series in written.series.values() for p in series.paths]


@dataclass(frozen=True)
class Ingested:
    study_uid: str
    n_instances: int
    n_skipped: int
    kind: str  # "dicom" | "nifti"


def spool_dicom(files: Sequence[Path], spool: Any) -> Ingested:
    """Store DICOM Part 10 files of ONE study in the spool; other files are skipped and counted."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    studies: set[str] = set()
    stored = skipped = 0
    tags = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
    parsed = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
            uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        except (InvalidDicomError, AttributeError, OSError, ValueError):
            skipped += 1
            continue
        studies.add(uids[0])
        parsed.append((path, uids))
    if not parsed:
        raise PermanentError(
            f"the upload holds no DICOM files ({skipped} other files); send a zip of DICOM "
            "files or the four NIfTI volumes of a case"
        )
    if len(studies) > 1:
        raise PermanentError(
            f"an upload must hold one study; it holds {len(studies)} StudyInstanceUIDs"
        )
    for path, (study, series, sop) in parsed:
        spool.store(study, series, sop, path.read_bytes())
        stored += 1
    return Ingested(
        study_uid=next(iter(studies)), n_instances=stored, n_skipped=skipped, kind="dicom"
    )


def ingest(
    uploads: Sequence[tuple[str, Path]],
    *,
    spool: Any,
    store: Any,
    actions: Any,
    rules: Sequence[Any],
    client_ip: str,
) -> Any:
    """Turn an upload into a queued job (or a failed one with its reason); returns the Job."""
    from dicom_node.classify import assign_roles, series_infos_from_dir
    from dicom_node.jobs import JobState

    scratch = spool.tmp / f"upload-{uuid.uuid4().hex}"
    try:
        files = unpack(uploads, scratch / "in")
        niftis = [p for p in files if is_nifti(p.name)]
        if niftis:
            roles = roles_from_names([p.name for p in niftis])
            by_name = {p.name: p for p in niftis}
            dicom = nifti_to_dicom(
                {role: by_name[name] for role, name in roles.items()},
                scratch / "dicom",
                patient_id=f"UPLOAD-{uuid.uuid4().hex[:8].upper()}",
            )
            ingested = spool_dicom(dicom, spool)
            ingested = Ingested(
                ingested.study_uid, ingested.n_instances, len(files) - len(niftis), "nifti"
            )
        else:
            ingested = spool_dicom(files, spool)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    classification = assign_roles(series_infos_from_dir(spool.study_dir(ingested.study_uid)), rules)
    roles_json = {str(role): uid for role, uid in classification.roles.items()}
    missing = [str(r) for r in classification.missing()]
    job = store.create(
        ingested.study_uid,
        calling_ae=UPLOAD_AE,
        calling_ip=client_ip,
        roles=roles_json,
        classification=classification.to_json()["series"],
        state=JobState.waiting,  # queued by actions.enqueue (stamped first: no double hand-off)
        source="upload",
    )
    store.audit(
        "upload",
        job_id=job.id,
        detail={"client_ip": client_ip, "kind": ingested.kind, "instances": ingested.n_instances,
                "skipped_files": ingested.n_skipped, "study_ref": ref(ingested.study_uid)},
    )  # fmt: skip
    log.info(
        "upload spooled",
        extra={"job_id": job.id, "kind": ingested.kind, "instances": ingested.n_instances,
               "study_ref": ref(ingested.study_uid)},
    )  # fmt: skip
    if missing:
        found = ", ".join(r for r, uid in roles_json.items() if uid) or "none"
        return store.set_state(
            job.id, JobState.failed,
            reason=f"need T1, T1c, T2, FLAIR; found {found} (missing: {', '.join(missing)})",
        )  # fmt: skip
    try:
        actions.enqueue(job.id)
    except TransientError as exc:  # stays queued; the node hands it off when the broker is back
        log.warning("upload queued but not handed off", extra={"job_id": job.id, "error": str(exc)})
    return store.get(job.id)
