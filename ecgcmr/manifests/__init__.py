"""Manifest builders: turn a real-data layout into a manifest that ``read_manifest`` accepts.

Two sources::

    build_ukb_manifest(bulk_dir, table, out_dir, censor_date=...)   # UK Biobank bulk files
    build_folder_manifest(ecg_dir, cmr_dir, out_dir)                  # any WFDB + NIfTI folders

Both write ``out_dir/manifest.csv`` (paths relative to it) and ``out_dir/build_report.csv``,
one row per subject or file that was left out and why: nothing is dropped silently.
Command line: ``ecgcmr manifest ukb ...`` and ``ecgcmr manifest folders ...``.
"""

from __future__ import annotations

from ecgcmr.manifests.folders import DEFAULT_PATTERNS, build_folder_manifest
from ecgcmr.manifests.ukb import (
    ICD10_GROUPS,
    UKB_FIELDS,
    build_ukb_manifest,
    read_ukb_table,
    ukb_table_to_columns,
)

__all__ = [
    "DEFAULT_PATTERNS", "ICD10_GROUPS", "UKB_FIELDS", "build_folder_manifest",
    "build_ukb_manifest", "read_ukb_table", "ukb_table_to_columns",
]
