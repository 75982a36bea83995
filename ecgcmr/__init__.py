"""ecgcmr: companion package to "Dual-Phase Cross-Modal Contrastive Learning for CMR-Guided
ECG Representations for Cardiovascular Disease Assessment".

The notebooks in ``notebooks/`` tell the study; this package holds everything they call:
``ecgcmr.synth`` (the synthetic paired cohort), ``ecgcmr.data`` (manifest, loaders, cache,
datasets), ``ecgcmr.plots``, ``ecgcmr.runs`` (run folders, papermill) and ``ecgcmr.config``
(profiles). Bad input always raises :class:`DataError`.
"""

from ecgcmr.constants import CONDITIONS, COVARIATES, ECG_FS_HZ, ECG_N_SAMPLES, LEADS, PHENOTYPES
from ecgcmr.errors import DataError

__version__ = "0.1.0"
__all__ = ["CONDITIONS", "COVARIATES", "DataError", "ECG_FS_HZ", "ECG_N_SAMPLES", "LEADS",
           "PHENOTYPES", "__version__"]
