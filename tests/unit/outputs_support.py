"""Small, realistic MR series built with pydicom for the outputs tests (no files committed).

Not a test module: helpers shared by tests/unit/test_outputs_*.py and
tests/integration/test_outputs_dciodvfy.py.
"""

from __future__ import annotations

import datetime

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

CANARY_NAME = "CANARY^PHI"
CANARY_ID = "CANARY-ID-0042"


def _rotation_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def _rotation_x(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[1.0, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def make_mr_series(
    n_slices: int = 24,
    rows: int = 64,
    columns: int = 64,
    *,
    pixel_mm: float = 3.0,
    slice_mm: float = 3.0,
    oblique_deg: float = 0.0,
    study_uid: str | None = None,
    patient_name: str = CANARY_NAME,
    patient_id: str = CANARY_ID,
    shuffle: bool = False,
    seed: int = 0,
) -> list[pydicom.Dataset]:
    """An axial (optionally oblique) T1c-like series with an ellipsoid 'head', int16 pixels.

    Datasets come back sorted by ascending position along the slice normal (the NativeLabels
    order) unless ``shuffle``.
    """
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    rot = _rotation_x(oblique_deg) @ _rotation_z(oblique_deg / 2)
    row_cos, col_cos = rot @ np.array([1.0, 0, 0]), rot @ np.array([0, 1.0, 0])
    normal = np.cross(row_cos, col_cos)
    centre = np.array([0.0, -10.0, 20.0])
    origin0 = (
        centre
        - row_cos * pixel_mm * (columns - 1) / 2
        - col_cos * pixel_mm * (rows - 1) / 2
        - normal * slice_mm * (n_slices - 1) / 2
    )
    yy, xx = np.mgrid[0:rows, 0:columns]
    out = []
    for k in range(n_slices):
        z = (k - (n_slices - 1) / 2) / (n_slices / 2)
        r2 = ((yy - rows / 2) / (rows * 0.42)) ** 2 + ((xx - columns / 2) / (columns * 0.36)) ** 2
        head = r2 + z**2 < 1
        img = np.where(head, 600 + 150 * np.cos(6 * r2), 0) + rng.normal(0, 15, (rows, columns))
        pixels = np.clip(img, 0, 4000).astype(np.int16)
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.PatientPosition = "HFS"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101010"
        ds.AccessionNumber = "ACC-CANARY-7"
        ds.Modality = "MR"
        ds.Manufacturer = "SIEMENS"
        ds.ReferringPhysicianName = "DOC^REF"
        ds.StudyDescription = "MR BRAIN"
        ds.SeriesDescription = "t1_mprage_tra_Gd"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "F"
        ds.PatientAge = "066Y"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 7
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = 2000
        ds.EchoTime = 2.5
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 3
        ds.ContrastBolusAgent = "GADOLINIUM"
        ds.SliceThickness = slice_mm
        ds.SpacingBetweenSlices = slice_mm
        ds.ImagePositionPatient = [round(float(v), 6) for v in origin0 + normal * slice_mm * k]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.SliceLocation = round(float(np.dot(origin0 + normal * slice_mm * k, normal)), 6)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter = 600
        ds.WindowWidth = 1200
        ds.PixelData = pixels.tobytes()
        ds.AcquisitionDateTime = datetime.datetime(2026, 1, 1, 10, 10).strftime("%Y%m%d%H%M%S")
        out.append(ds)
    if shuffle:
        perm = rng.permutation(n_slices)
        out = [out[i] for i in perm]
    return out


def make_labels(
    n_slices: int = 24, rows: int = 64, columns: int = 64, *, radius_frac: float = 0.2
) -> np.ndarray:
    """Concentric tumour: enhancing rim (4) around necrosis (1), edema (2) outside, off-centre."""
    zz, yy, xx = np.mgrid[0:n_slices, 0:rows, 0:columns]
    cz, cy, cx = n_slices * 0.5, rows * 0.42, columns * 0.58
    d = np.sqrt(
        ((zz - cz) / (n_slices * radius_frac)) ** 2
        + ((yy - cy) / (rows * radius_frac)) ** 2
        + ((xx - cx) / (columns * radius_frac)) ** 2
    )
    labels = np.zeros((n_slices, rows, columns), np.uint8)
    labels[d < 1.0] = 2
    labels[d < 0.6] = 4
    labels[d < 0.35] = 1
    return labels


def make_enhanced_mr(series: list[pydicom.Dataset], *, reverse: bool = False) -> pydicom.Dataset:
    """One Enhanced MR Image (multi-frame) holding the slices of ``series`` as frames.

    Plane position per frame, orientation and pixel measures shared, as scanners write them.
    ``reverse`` stores the frames in descending position (frame 1 = last slice).
    """
    from pydicom.sequence import Sequence as Seq

    slices = list(reversed(series)) if reverse else list(series)
    first = slices[0]
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    for keyword in (
        "SpecificCharacterSet",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "Modality",
        "Manufacturer",
        "ReferringPhysicianName",
        "StudyDescription",
        "SeriesDescription",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "SeriesNumber",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PatientPosition",
    ):
        setattr(ds, keyword, first[keyword].value)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.SOPInstanceUID = uid
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.ContentDate, ds.ContentTime = "20260101", "101010"
    ds.AcquisitionDateTime = "20260101101010"
    ds.NumberOfFrames = len(slices)
    shared = pydicom.Dataset()
    measures = pydicom.Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    measures.SpacingBetweenSlices = first.SpacingBetweenSlices
    orient = pydicom.Dataset()
    orient.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PixelMeasuresSequence = Seq([measures])
    shared.PlaneOrientationSequence = Seq([orient])
    ds.SharedFunctionalGroupsSequence = Seq([shared])
    per_frame = []
    for k, s in enumerate(slices):
        item = pydicom.Dataset()
        pos = pydicom.Dataset()
        pos.ImagePositionPatient = s.ImagePositionPatient
        item.PlanePositionSequence = Seq([pos])
        content = pydicom.Dataset()
        content.DimensionIndexValues = [k + 1]
        item.FrameContentSequence = Seq([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Seq(per_frame)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    return ds
