"""ecgcmr: companion package to "Dual-Phase Cross-Modal Contrastive Learning for CMR-Guided
ECG Representations for Cardiovascular Disease Assessment".

The notebooks in ``notebooks/`` tell the study; this package holds everything they call.
Bad input always raises :class:`DataError`. Four layers: the core and the study import neither
satellites nor the app; satellites import the core and the study, never the app
(``tests/test_layers.py`` checks every import):

core        what a reader of the paper reads: ``models/``, ``data/`` (manifest, loaders, cache,
            datasets, phenotypes, file writers), ``losses``, ``methods``, ``stages``, ``train``,
            ``pretrain``, ``distributed``, ``config`` (profiles), ``constants``, ``errors``,
            ``files``, ``parallel``
study       evaluation and reporting on top of it: ``evaluate/``, ``ecg_measurements``,
            ``plots``, ``html_report``, ``predict``, ``pretrained``, ``trunk_cache``
satellites  ``synth/`` (the synthetic paired cohort, and the instrument built on its truth:
            ceilings, controls), ``convert/`` (real-data formats -> the data contract),
            ``manifests/`` (manifest builders)
app         the entry points: ``cli``, ``runs`` (run folders, papermill), ``publish``,
            ``__main__``

No module imports a private (``_name``) name of another.
"""

from ecgcmr.constants import CONDITIONS, COVARIATES, ECG_FS_HZ, ECG_N_SAMPLES, LEADS, PHENOTYPES
from ecgcmr.errors import DataError

__version__ = "0.1.0"
__all__ = ["CONDITIONS", "COVARIATES", "DataError", "ECG_FS_HZ", "ECG_N_SAMPLES", "LEADS",
           "PHENOTYPES", "__version__"]
