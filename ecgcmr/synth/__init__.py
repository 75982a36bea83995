"""The synthetic paired cohort ("digital twins"): physiology -> CMR, ECG, outcomes -> files.

Modules: ``physiology`` (hidden cardiac state from cited reference ranges), ``cmr`` (3D
short-axis rendering at ED/ES + phenotype measurement from labels), ``ecg`` (heart vector
projected on the 12 leads), ``outcomes`` (diagnoses and time-to-event), ``cohort`` (writes
WFDB + NIfTI + manifest, in parallel, resumable).

Writers of test inputs in real-data formats, built from synthetic signals (what the
converters of :mod:`ecgcmr.convert` are tested on): ``ge_xml`` (GE CardioSoft XML),
``dicom_ecg`` (DICOM 12-lead ECG waveforms), ``dicom_cmr`` (short-axis cine DICOM series and
zips, with a phantom whose LV volume curve is known), ``public_layouts`` (ACDC and M&Ms folders).
"""
