"""The synthetic paired cohort ("digital twins"), a satellite of the core: physiology -> CMR, ECG,
outcomes -> files, and the instrument built on its known truth.

Modules: ``physiology`` (hidden cardiac state from cited reference ranges), ``cmr`` (3D
short-axis rendering at ED/ES; phenotypes are measured from its labels by
:mod:`ecgcmr.data.phenotypes`), ``ecg`` (heart vector projected on the 12 leads), ``outcomes``
(diagnoses and time-to-event), ``cohort`` (writes WFDB + NIfTI + manifest, in parallel,
resumable); ``ceilings`` (how much of each target an ECG can hold at all) and ``controls`` (the
dual-phase comparison in worlds where the answer is known) read the generator.

The writers of test inputs in real-data formats (GE and MUSE XML, DICOM ECG and cine, CinC
``.mat``, ACDC / M&Ms folders) live with the tests, in ``tests/writers/``.
"""
