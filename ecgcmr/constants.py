"""Named constants of the data contract: lead order, sampling, phenotypes, outcomes.

These are the *input contract* of every model in the project (see README, "Data contract").
"""

from __future__ import annotations

#: The 12 standard leads, in the order every ECG array uses (axis 0 of ``[12, T]``).
LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
ECG_FS_HZ: int = 500          # sampling rate of every array the models see
ECG_DURATION_S: float = 10.0  # length of a resting ECG strip
ECG_N_SAMPLES: int = 5000     # ECG_FS_HZ * ECG_DURATION_S

#: Image-derived phenotypes (IDPs): LV/RV volumes (mL), stroke volumes (mL), EF (%), LV mass (g).
PHENOTYPES: tuple[str, ...] = (
    "lvedv_ml", "lvesv_ml", "lvsv_ml", "lvef_pct", "lvm_g",
    "rvedv_ml", "rvesv_ml", "rvsv_ml", "rvef_pct",
)
#: The three phenotypes the paper reports.
PAPER_PHENOTYPES: tuple[str, ...] = ("lvedv_ml", "lvesv_ml", "lvef_pct")

#: The paper's six conditions. For each: ``<c>_ever`` (0/1, "ever diagnosed", the paper's
#: label), ``<c>_event`` (0/1 incident event after imaging) and ``<c>_time_years``.
CONDITIONS: tuple[str, ...] = ("cad", "af", "hf", "cardiomyopathy", "mi", "cardiac_arrest")

#: Covariates the paper fuses with the ECG representation.
#: sex: 0 female, 1 male (UK Biobank field 31 coding). smoking: UKB field 20116 coding
#: (0 never, 1 previous, 2 current). alcohol: UKB field 1558 coding (1 daily or almost daily
#: ... 6 never).
COVARIATES: tuple[str, ...] = ("age_years", "sex", "bmi", "sbp_mmhg", "smoking", "alcohol")

#: Label values in every CMR segmentation (synthetic or user-supplied).
LABEL_BACKGROUND: int = 0
LABEL_LV_BLOOD: int = 1
LABEL_LV_MYO: int = 2
LABEL_RV_BLOOD: int = 3

#: Myocardial density used to turn myocardial volume into LV mass (g/mL).
MYOCARDIAL_DENSITY_G_PER_ML: float = 1.05

#: The synthetic world's systolic coupling: how much LVEF reaches the ECG (1: the default
#: world; 0: the negative control of the dual-phase claim; > 1: a positive one). What it
#: scales is described in :mod:`ecgcmr.synth.physiology`.
DEFAULT_SYSTOLIC_COUPLING: float = 1.0
