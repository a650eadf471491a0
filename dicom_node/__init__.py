"""The DICOM node: receive MR studies, spool them durably, decide completeness, queue jobs."""
