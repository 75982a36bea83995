"""Converters from real-data formats to the project's data contract (WFDB ECG, NIfTI CMR).

Every converter treats its input as untrusted: XML through ``defusedxml``, zips read in memory
with size bounds, nothing executed or unpickled. Bad input raises :class:`ecgcmr.errors.DataError`
naming the file and what is wrong.
"""
