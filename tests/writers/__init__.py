"""Writers of test inputs in real-data formats, built from synthetic signals: what the converters
of :mod:`ecgcmr.convert` are tested on (``from writers.ge_xml import write_ge_xml``; pytest puts
``tests/`` on ``sys.path``).

============== ==================================================================================
ge_xml         GE CardioSoft resting-ECG XML (UK Biobank field 20205)
muse_xml       GE MUSE resting-ECG XML (``RestingECG``)
dicom_ecg      DICOM 12-lead ECG Waveform Storage
cinc_mat       PhysioNet/CinC Challenge 2020/2021 records (``.mat`` + ``.hea``)
dicom_cmr      short-axis cine DICOM series and zips, with a phantom whose LV volume curve is known
public_layouts ACDC and M&Ms folders, from a box phantom whose label volumes are known
============== ==================================================================================
"""
