"""Converters from real-data formats to the project's data contract (WFDB ECG, NIfTI CMR).

============== ============================================================================
ecg_any        any ECG files/folders (format told from content) -> WFDB (``ecgcmr convert ecg``)
ecg_xml        UK Biobank resting ECG (field 20205): GE CardioSoft XML -> WFDB + measurements
muse_xml       GE MUSE resting ECG XML (``RestingECG``) -> WFDB
ecg_dicom      DICOM 12-lead ECG Waveform Storage -> WFDB at 500 Hz
cmr_any        any SAX cine inputs (DICOM, ACDC, M&Ms, 4D NIfTI) -> ED/ES NIfTI (``convert cmr``)
cmr_dicom      UK Biobank short-axis cine (field 20209): DICOM zip -> ED/ES NIfTI; refuses LAX
public_cmr     ACDC and M&Ms folders -> ED/ES NIfTI + label maps in our convention
safe_zip       reading untrusted zips in memory with name, size and ratio bounds
safe_xml       parsing untrusted XML: size bound, no entities, no external references
============== ============================================================================

Every converter treats its input as untrusted: XML through ``defusedxml``, zips read in memory
with size bounds, nothing executed or unpickled. Bad input raises :class:`ecgcmr.errors.DataError`
naming the file and what is wrong. They write through :mod:`ecgcmr.data.writers` (WFDB,
NIfTI); the manifest builders in :mod:`ecgcmr.manifests` call them.
"""
