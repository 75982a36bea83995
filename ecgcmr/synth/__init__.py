"""The synthetic paired cohort ("digital twins"): physiology -> CMR, ECG, outcomes -> files.

Modules: ``physiology`` (hidden cardiac state from cited reference ranges), ``cmr`` (3D
short-axis rendering at ED/ES + phenotype measurement from labels), ``ecg`` (heart vector
projected on the 12 leads), ``outcomes`` (diagnoses and time-to-event), ``cohort`` (writes
WFDB + NIfTI + manifest, in parallel, resumable).
"""
