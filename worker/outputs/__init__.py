"""Outputs of a job: DICOM-SEG, measurement SR, overlay Secondary Capture, volumes (pure).

Each builder takes numpy labels and the source pydicom datasets and returns pydicom Datasets;
only :mod:`worker.outputs.writer` touches the disk.
"""
