"""The latent cardiac state of one synthetic subject, drawn from published adult reference ranges.

:func:`sample_state` returns one subject's state, a flat dict whose keys are fixed by the
state schema (``STATE_KEYS``): covariates like the UK Biobank (UKB) imaging cohort, the *target*
LV/RV geometry the CMR renderer builds, ECG intervals, the anatomical direction of the heart,
and whether the subject is in atrial fibrillation at the time of the ECG.

Correlated quantities come from a small explicit structural model, not from independent draws:

* body size: height by sex, BMI log-normal, weight = BMI x height^2, BSA by Mosteller;
* ventricular volumes and LV mass are log-normal around the healthy UKB reference means
  (:data:`REFERENCE_RANGES`, Petersen 2017) and scale with BSA, fall with age and rise with
  systolic blood pressure; one shared "heart size" factor correlates LV volume, RV volume
  and LV mass beyond what body size explains;
* LVEF and RVEF are normal around the reference means; ESV = EDV x (1 - EF), so EF and ESV
  are negatively correlated by construction;
* a minority (~10 %) are abnormal archetypes: "dilated" (large LV, EF 20-45 %),
  "hypertrophic" (heavy LV, small cavity, normal/high EF), "conduction" (QRS 120-170 ms);
* ECG: heart rate rises when stroke volume and EF are low; QRS widens with LV dilation and
  mass; QT comes from a QTc model corrected back to the heart rate (Framingham formula).

Every published number is cited where it is defined. Where the source could not be read in
full, the comment says so and says how the number was derived.

Randomness only through the passed ``numpy.random.Generator``; every call consumes the same
number of variates whatever branch is taken, so a subject's state depends only on its stream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Final

import numpy as np
import pandas as pd

from ecgcmr.constants import DEFAULT_SYSTOLIC_COUPLING, PHENOTYPES

# ============================================================================================
# Schema
# ============================================================================================
#: Keys of the latent state, in order (the contract of /shared state schema; do not add keys
#: here without updating that schema).
STATE_KEYS: Final[tuple[str, ...]] = (
    "subject_id",
    "sex", "age_years",
    "height_cm", "weight_kg", "bmi", "bsa_m2",
    "sbp_mmhg", "smoking", "alcohol",
    "archetype",
    "lvedv_ml", "lvef", "lvm_g", "rvedv_ml", "rvef",
    "heart_rate_bpm", "pr_ms", "qrs_ms", "qt_ms",
    "heart_azimuth_deg", "heart_elevation_deg",
    "in_af",
)
#: Archetypes, "normal" first.
ARCHETYPES: Final[tuple[str, ...]] = ("normal", "dilated", "hypertrophic", "conduction")

FEMALE: Final[int] = 0  # UKB field 31 coding
MALE: Final[int] = 1

# ============================================================================================
# Covariates: the UK Biobank imaging cohort
# ============================================================================================
# Sex: ~48 % men among UKB imaging participants (project brief; Littlejohns TJ et al., Nat
# Commun 2020;11:2624 describe the imaging cohort as slightly more male than the baseline
# cohort, which is 45.6 % male).
P_MALE: Final[float] = 0.48
# Age at the imaging visit: invited 2014-2020 from the baseline cohort (40-69 y in 2006-10);
# imaging ages span ~45-82 y with a mean of ~64 y (Littlejohns 2020, Results; SD ~7.7 y is our
# estimate from that range, not a quoted number).
AGE_MEAN_YEARS: Final[float] = 64.0
AGE_SD_YEARS: Final[float] = 7.7
AGE_MIN_YEARS: Final[float] = 45.0
AGE_MAX_YEARS: Final[float] = 82.0
# Height by sex (cm). UKB baseline height (field 50) averages 168.5 cm over both sexes (UK
# Biobank showcase summary, as tabulated in github.com/spiros/ukb-biomarker-phenotypes,
# units_and_ranges.md); the sex split (men ~175.9, women ~162.7 cm, SD ~6.5) reproduces that mean
# with 46 % men and matches the Health Survey for England at these ages (our split, not quoted).
HEIGHT_MEAN_CM: Final[Mapping[int, float]] = {FEMALE: 162.7, MALE: 175.9}
HEIGHT_SD_CM: Final[Mapping[int, float]] = {FEMALE: 6.2, MALE: 6.8}
HEIGHT_LOSS_CM_PER_YEAR_OVER_60: Final[float] = 0.1  # age-related loss of stature (approximate)
# BMI: SD 4.3 kg/m^2 in UKB imaging participants (Petersen SE et al., PLoS One 2017;12:e0185114,
# "The impact of cardiovascular risk factors on cardiac structure and function", Abstract:
# "+8.3 % per SD [4.3 kg/m2]"). Means ~27.0 (men) / 26.0 (women): the imaging cohort is a
# little leaner than the baseline cohort (mean ~27.4); sex split is our estimate.
BMI_MEAN: Final[Mapping[int, float]] = {FEMALE: 26.0, MALE: 27.0}
BMI_SD: Final[float] = 4.3
BMI_BOUNDS: Final[tuple[float, float]] = (16.0, 55.0)
WEIGHT_BOUNDS_KG: Final[tuple[float, float]] = (38.0, 180.0)
HEIGHT_BOUNDS_CM: Final[tuple[float, float]] = (140.0, 205.0)
# Systolic blood pressure: UKB mean 138.7 mmHg (field 93, showcase summary as above; range
# 76-213). Higher in men and with age and BMI; residual SD chosen so the total SD is ~18 mmHg.
SBP_FEMALE_AT_64Y_MMHG: Final[float] = 136.0
SBP_MALE_EXCESS_MMHG: Final[float] = 5.0
SBP_PER_YEAR_MMHG: Final[float] = 0.6
SBP_PER_BMI_UNIT_MMHG: Final[float] = 0.9
SBP_RESIDUAL_SD_MMHG: Final[float] = 17.0
SBP_REF_BMI: Final[float] = 26.5
SBP_BOUNDS_MMHG: Final[tuple[float, float]] = (85.0, 230.0)
# Smoking status (UKB field 20116: 0 never, 1 previous, 2 current). At baseline UKB had ~55 %
# never, ~35 % previous, ~10 % current smokers; imaging participants (seen 4-10 years later,
# healthier) smoke less: we use ~4-5 % current (estimate; Littlejohns 2020 report fewer current
# smokers at imaging than at baseline but we could not read the exact table).
SMOKING_PROBS: Final[Mapping[int, tuple[float, float, float]]] = {
    FEMALE: (0.63, 0.33, 0.04),
    MALE: (0.55, 0.40, 0.05),
}
# Alcohol intake frequency (UKB field 1558: 1 daily ... 6 never), UKB participants aged 55-64
# (Fry A et al., Am J Epidemiol 2017;186:1026-1034, Table 4; men n=95,207, women n=116,605).
ALCOHOL_PROBS: Final[Mapping[int, tuple[float, ...]]] = {
    FEMALE: (0.176, 0.209, 0.249, 0.122, 0.150, 0.095),
    MALE: (0.283, 0.269, 0.242, 0.080, 0.068, 0.058),
}

# ============================================================================================
# Healthy reference ranges (Petersen 2017, UK Biobank CMR)
# ============================================================================================
PETERSEN_2017: Final[str] = (
    "Petersen SE et al., J Cardiovasc Magn Reson 2017;19:18 (UK Biobank healthy Caucasians, "
    "45-74 y, 1.5 T SSFP, papillary muscles in the LV volume)"
)
# Body surface area of the reference cohort, derived from Petersen 2017 Table 12: stroke volume
# / stroke volume index = 96/49 = 1.96 m^2 (men) and 75/45 = 1.67 m^2 (women).
REF_BSA_M2: Final[Mapping[int, float]] = {FEMALE: 1.67, MALE: 1.96}
# The reference cohort was evenly spread over 45-54, 55-64, 65-74 y: mean ~60 y, SD ~8.7 y
# (uniform over 30 years); it excluded hypertension, so we take it as normotensive (~125 mmHg,
# our assumption).
REF_AGE_YEARS: Final[float] = 60.0
REF_AGE_SD_YEARS: Final[float] = 8.7
REF_SBP_MMHG: Final[float] = 125.0
# Within-sex SD of log(BSA) in a non-obese, normotensive cohort: ~8.5 % (what our covariate model
# gives for such a subset; an estimate, not a quoted number). Used only to split the reference SD
# into a body-size part and a residual part.
REF_LOG_BSA_SD: Final[float] = 0.085


def _row(pheno: str, sex: int, mean: float, sd: float, unit: str, source: str) -> dict[str, object]:
    return {"phenotype": pheno, "sex": sex, "mean": mean, "sd": sd, "unit": unit, "source": source}


_T3 = f"{PETERSEN_2017}, Table 3 (women): 95 % range lo-hi -> mean (lo+hi)/2, SD (hi-lo)/3.92"
_T12 = f"{PETERSEN_2017}, Table 12 (by sex), as quoted by a secondary source"
_ABS = f"{PETERSEN_2017}, Abstract"
_DER = f"derived from {PETERSEN_2017}"

#: Healthy reference mean and SD by sex (0 female, 1 male) for the nine phenotypes of
#: ``ecgcmr.constants.PHENOTYPES`` (volumes mL, mass g, EF %). Columns: phenotype, sex, mean,
#: sd, unit, source. The women's rows come straight from Petersen 2017; for men the full table
#: could not be read, so some rows are derived from the men's numbers that could (the source
#: column says how).
REFERENCE_RANGES: Final[pd.DataFrame] = pd.DataFrame([
    # --- women -------------------------------------------------------------------------------
    _row("lvedv_ml", FEMALE, 124.5, 18.6, "mL", _T3 + " (88-161 mL)"),
    _row("lvesv_ml", FEMALE, 49.5, 9.4, "mL", _T3 + " (31-68 mL)"),
    _row("lvsv_ml", FEMALE, 75.0, 14.0, "mL", _T12),
    _row("lvef_pct", FEMALE, 61.0, 5.0, "%", _ABS),
    _row("lvm_g", FEMALE, 70.0, 13.0, "g",
         _DER + ": LV mass index 42 +- 7 g/m^2 (Abstract) x reference BSA 1.67 m^2 "
         "(= SV/SVi, Table 12); SD includes the spread of BSA"),
    _row("rvedv_ml", FEMALE, 125.5, 20.7, "mL", _T3 + " (85-166 mL)"),
    _row("rvesv_ml", FEMALE, 52.0, 12.8, "mL", _T3 + " (27-77 mL)"),
    _row("rvsv_ml", FEMALE, 73.5, 13.0, "mL", _T3 + " (48-99 mL)"),
    _row("rvef_pct", FEMALE, 57.5, 5.4, "%", _T3 + " (47-68 %)"),
    # --- men ---------------------------------------------------------------------------------
    _row("lvedv_ml", MALE, 165.5, 24.7, "mL",
         _DER + ": EDV = SV/EF = 96 mL (Table 12) / 0.58 (Abstract); SD at the women's CV"),
    _row("lvesv_ml", MALE, 69.5, 13.2, "mL",
         _DER + ": ESV = EDV - SV; SD at the women's CV"),
    _row("lvsv_ml", MALE, 96.0, 20.0, "mL", _T12),
    _row("lvef_pct", MALE, 58.0, 5.0, "%", _ABS),
    _row("lvm_g", MALE, 104.0, 19.0, "g",
         _DER + ": LV mass index 53 +- 9 g/m^2 (Abstract) x reference BSA 1.96 m^2 "
         "(= SV/SVi, Table 12); SD includes the spread of BSA"),
    _row("rvedv_ml", MALE, 179.4, 29.6, "mL",
         _DER + ": RVSV = LVSV (no shunt) / RVEF; SD at the women's CV"),
    _row("rvesv_ml", MALE, 83.4, 20.5, "mL", _DER + ": RVEDV - RVSV; SD at the women's CV"),
    _row("rvsv_ml", MALE, 96.0, 17.0, "mL",
         _DER + ": equal to LVSV (Table 12) in a heart without shunt or regurgitation"),
    _row("rvef_pct", MALE, 53.5, 5.4, "%",
         _DER + ": women's RVEF minus 4 points (men's RVEF 4 % lower in MESA-RV, Kawut SM et al., "
         "Circulation 2011;123:2542)"),
])
assert set(REFERENCE_RANGES["phenotype"]) == set(PHENOTYPES)


# (phenotype, sex) -> (mean, sd), for fast look-ups while sampling.
_REFERENCE: Final[dict[tuple[str, int], tuple[float, float]]] = {
    (str(r.phenotype), int(r.sex)): (float(r.mean), float(r.sd))
    for r in REFERENCE_RANGES.itertuples()
}


def reference_mean_sd(phenotype: str, sex: int) -> tuple[float, float]:
    """Healthy reference (mean, SD) of one phenotype for one sex (0 female, 1 male)."""
    try:
        return _REFERENCE[(phenotype, int(sex))]
    except KeyError:
        raise KeyError(f"no reference range for phenotype={phenotype!r}, sex={sex!r}") from None


# ============================================================================================
# Structural model of the ventricles
# ============================================================================================
# Elasticities with respect to BSA (log-log). UKB imaging: +1 SD of BMI (4.3 kg/m^2, i.e. ~+7.4 %
# BSA at fixed height) goes with LVEDV +4.8 %, RVEDV +5.3 %, LV mass +8.3 % (Petersen 2017 PLoS
# One, Abstract) -> ~0.7 for volumes and ~1.1 for mass.
BSA_ELASTICITY_VOLUME: Final[float] = 0.7
BSA_ELASTICITY_MASS: Final[float] = 1.1
# Systolic pressure: +1 SD (~18 mmHg, our assumption of the SD) goes with LV mass +6.8 % and
# LVEDV +4.5 % (Petersen 2017 PLoS One, Abstract).
SBP_SD_MMHG: Final[float] = 18.0
LOG_LVM_PER_MMHG: Final[float] = math.log(1.068) / SBP_SD_MMHG
LOG_EDV_PER_MMHG: Final[float] = math.log(1.045) / SBP_SD_MMHG
# Age: volumes fall with age in both sexes; LV mass falls in men and is flat in women; LVEF is
# flat with age (Petersen 2017 JCMR, Abstract). Size of the volume effect, ~ -4 % per decade,
# is our estimate consistent with that direction and with Framingham (Chuang ML et al., J Magn
# Reson Imaging 2014;39:895, "LV volumes decreased with greater age ... even after indexation").
LOG_VOLUME_PER_YEAR: Final[float] = -0.004
LOG_LVM_PER_YEAR: Final[Mapping[int, float]] = {FEMALE: 0.0, MALE: -0.003}
# RVEF rises slightly with age (Petersen 2017 JCMR, Abstract; size is our estimate).
RVEF_PCT_PER_YEAR: Final[float] = 0.05
# Correlation structure beyond body size: loadings on one shared "heart size" factor. LV and
# RV volume residuals then correlate at 0.85^2 = 0.72, LV volume and mass residuals at 0.51.
SIZE_LOADING_LV: Final[float] = 0.85
SIZE_LOADING_RV: Final[float] = 0.85
SIZE_LOADING_MASS: Final[float] = 0.60
# LVEF and RVEF residuals correlate moderately.
EF_CORRELATION_LV_RV: Final[float] = 0.4


def _lognormal_params(mean: float, sd: float, explained_log_var: float) -> tuple[float, float]:
    """(log-mean, residual log-SD) of a log-normal with this arithmetic mean and SD.

    ``explained_log_var`` is the part of the log-variance the covariates already explain
    (body size, age), so the residual is what is left.
    """
    total_log_var = math.log(1.0 + (sd / mean) ** 2)
    mu = math.log(mean) - 0.5 * total_log_var
    resid_var = max(total_log_var - explained_log_var, 0.05 * total_log_var)
    return mu, math.sqrt(resid_var)


def _explained_log_var(bsa_elasticity: float, log_per_year: float) -> float:
    return (bsa_elasticity * REF_LOG_BSA_SD) ** 2 + (log_per_year * REF_AGE_SD_YEARS) ** 2


def _log_model(pheno: str, bsa_elasticity: float, log_per_year: Mapping[int, float]
               ) -> dict[int, tuple[float, float]]:
    out = {}
    for sex in (FEMALE, MALE):
        mean, sd = reference_mean_sd(pheno, sex)
        out[sex] = _lognormal_params(mean, sd, _explained_log_var(bsa_elasticity,
                                                                  log_per_year[sex]))
    return out


_LVEDV_LOG: Final = _log_model("lvedv_ml", BSA_ELASTICITY_VOLUME,
                               {FEMALE: LOG_VOLUME_PER_YEAR, MALE: LOG_VOLUME_PER_YEAR})
_RVEDV_LOG: Final = _log_model("rvedv_ml", BSA_ELASTICITY_VOLUME,
                               {FEMALE: LOG_VOLUME_PER_YEAR, MALE: LOG_VOLUME_PER_YEAR})
_LVM_LOG: Final = _log_model("lvm_g", BSA_ELASTICITY_MASS, LOG_LVM_PER_YEAR)

# ============================================================================================
# Abnormal archetypes (~10 % in total)
# ============================================================================================
#: Probability of each archetype (the rest is "normal").
ARCHETYPE_PROBS: Final[Mapping[str, float]] = {
    "dilated": 0.035,       # dilated, low EF: LV systolic dysfunction is present in ~3-6 % of
                            # community adults aged > 45 (Redfield MM et al., JAMA
                            # 2003;289:194; Wang TJ et al., Circulation 2003;108:977)
    "hypertrophic": 0.030,  # LV hypertrophy (concentric; hypertensive or HCM-like)
    "conduction": 0.035,    # wide-QRS conduction delay (LBBB-like); ~1-3 % in people > 60
}
# Dilated: LV volume 1.35-1.9 x, EF 20-45 % (brief), eccentric hypertrophy, RV often involved.
DILATED_EDV_FACTOR: Final[tuple[float, float]] = (1.35, 1.9)
DILATED_EF: Final[tuple[float, float]] = (0.20, 0.45)
DILATED_LVM_FACTOR: Final[tuple[float, float]] = (1.10, 1.35)
DILATED_RVEDV_FACTOR: Final[tuple[float, float]] = (1.0, 1.3)
DILATED_RVEF_DROP_PCT: Final[tuple[float, float]] = (0.0, 12.0)
DILATED_EXTRA_QRS_MS: Final[tuple[float, float]] = (0.0, 20.0)  # intraventricular delay
# Hypertrophic: heavy LV with a small cavity and normal-to-high EF.
HYPERTROPHIC_LVM_FACTOR: Final[tuple[float, float]] = (1.45, 2.1)
HYPERTROPHIC_EDV_FACTOR: Final[tuple[float, float]] = (0.72, 0.92)
HYPERTROPHIC_EF: Final[tuple[float, float]] = (0.62, 0.80)
# Conduction: QRS 120-170 ms (brief); LBBB dyssynchrony lowers EF a few points and dilates
# the LV slightly (Vernooy K et al., Eur Heart J 2005;26:91, canine LBBB model).
CONDUCTION_QRS_MS: Final[tuple[float, float]] = (120.0, 170.0)
CONDUCTION_EF_DROP: Final[tuple[float, float]] = (0.02, 0.08)
CONDUCTION_EDV_FACTOR: Final[tuple[float, float]] = (1.0, 1.15)
CONDUCTION_EXTRA_PR_MS: Final[float] = 12.0

# ============================================================================================
# Physiological bounds (clipping)
# ============================================================================================
LVEF_BOUNDS: Final[tuple[float, float]] = (0.10, 0.85)
RVEF_BOUNDS: Final[tuple[float, float]] = (0.20, 0.80)
LVEDV_BOUNDS_ML: Final[tuple[float, float]] = (50.0, 450.0)
RVEDV_BOUNDS_ML: Final[tuple[float, float]] = (50.0, 400.0)
LVM_BOUNDS_G: Final[tuple[float, float]] = (40.0, 400.0)
HR_BOUNDS_BPM: Final[tuple[float, float]] = (38.0, 150.0)
PR_BOUNDS_MS: Final[tuple[float, float]] = (90.0, 320.0)
QRS_BOUNDS_MS: Final[tuple[float, float]] = (60.0, 200.0)
QT_BOUNDS_MS: Final[tuple[float, float]] = (250.0, 600.0)
AZIMUTH_BOUNDS_DEG: Final[tuple[float, float]] = (5.0, 85.0)
ELEVATION_BOUNDS_DEG: Final[tuple[float, float]] = (-15.0, 85.0)

# ============================================================================================
# ECG intervals
# ============================================================================================
# Resting heart rate: women 66 +- 9 bpm (Women's Health Initiative ECG standards; Rautaharju PM et
# al., J Electrocardiol 2013, PMC3825808 Table 2); men ~2 bpm slower (estimate).
HR_BASE_BPM: Final[Mapping[int, float]] = {FEMALE: 66.0, MALE: 64.0}
HR_LOG_SD: Final[float] = 0.13
HR_LOG_PER_YEAR: Final[float] = -0.002
HR_LOG_PER_BMI_UNIT: Final[float] = 0.004
HR_LOG_CURRENT_SMOKER: Final[float] = 0.05
# Frank-Starling / baroreflex: cardiac output is defended, so a low stroke volume raises HR
# (partial compensation, exponent -0.25) and a low EF adds sympathetic drive.
HR_LOG_PER_LOG_SV: Final[float] = -0.25
HR_LOG_PER_EF_POINT_BELOW_50: Final[float] = 0.004

# Systolic coupling: how much of the subject's systolic function (LVEF, hence LVESV given
# LVEDV) reaches the ECG, the knob of the dual-phase controls (docs/controls.md). It scales
# every path from EF to the ECG, and nothing else:
#   1. heart rate: the stroke-volume term splits into an ED part, -0.25 log(LVEDV / expected),
#      which stays, and a systolic part, -0.25 log(LVEF / reference LVEF), which is scaled;
#   2. heart rate: the sympathetic term for EF below 50 % is scaled;
#   3. T waves: the LV strain term for EF below 45 % (ecgcmr.synth.ecg) is scaled;
#   4. the archetypes: the ECG shows them (conduction delay, dilation's QRS widening), so their
#      effect on EF (and RVEF) is scaled by min(coupling, 1) (_apply_archetype).
# At 0 the ECG is independent of LVEF and RVEF (so of ES anatomy beyond ED) given ED anatomy
# and the covariates; at 1 it is the default world (the terms above as cited); above 1 the
# direct paths 1-3 are amplified (a positive control, not a physiological claim). The default,
# ecgcmr.constants.DEFAULT_SYSTOLIC_COUPLING, is 1.
HR_LOG_IN_AF: Final[float] = 0.18  # ventricular rate in (rate-controlled) AF is higher
# PR: women 158 ms (WHI, PMC3825808 Table 2; SD ~22 ms in the Hispanic/Asian strata); men a few
# ms longer (estimate). Lengthens with age and shortens at higher heart rates.
PR_BASE_MS: Final[Mapping[int, float]] = {FEMALE: 158.0, MALE: 165.0}
PR_SD_MS: Final[float] = 20.0
PR_PER_YEAR_MS: Final[float] = 0.4
PR_PER_BPM_MS: Final[float] = -0.3
# QRS: women 85 +- 8 ms (WHI, PMC3825808 Table 2); men ~10 ms longer (sex differences in QRS are
# reported by Rijnbeek PR et al., J Electrocardiol 2014;47:914; size is our estimate). Wider with
# LV dilation and mass (a larger myocardium takes longer to activate).
QRS_BASE_MS: Final[Mapping[int, float]] = {FEMALE: 85.0, MALE: 95.0}
QRS_SD_MS: Final[float] = 7.0
QRS_PER_LOG_EDV_MS: Final[float] = 20.0   # +50 % EDV -> +8 ms
QRS_PER_LOG_LVM_MS: Final[float] = 15.0   # +50 % mass -> +6 ms
QRS_PER_YEAR_MS: Final[float] = 0.1
# QTc (Framingham-corrected): women 413 +- 14 ms (WHI rate-adjusted QT, PMC3825808 Table 2);
# men ~10 ms shorter (the 10 ms sex gap behind the 450/460 ms limits of Rautaharju PM et al.,
# AHA/ACCF/HRS recommendations, Circulation 2009;119:e241). Rises with age and LV mass; a wider
# QRS lengthens QT (QT includes depolarisation).
QTC_BASE_MS: Final[Mapping[int, float]] = {FEMALE: 413.0, MALE: 403.0}
QTC_SD_MS: Final[float] = 14.0
QTC_PER_YEAR_MS: Final[float] = 0.3
QTC_PER_MS_QRS_WIDENING: Final[float] = 0.8
QTC_PER_LOG_LVM_MS: Final[float] = 10.0
# Framingham linear correction (Sagie A et al., Am J Cardiol 1992;70:797):
# QTc = QT + 0.154 x (1 - RR), times in seconds.
FRAMINGHAM_QT_SLOPE_MS: Final[float] = 154.0

# ============================================================================================
# Anatomical direction of the heart (drives the electrical axis)
# ============================================================================================
# LV long axis: ~45 deg anterior of the patient's left in the horizontal plane, ~45 deg below the
# horizontal (frontal QRS axis ~ +30..+60 deg). The heart lies more horizontally with age and
# with obesity (leftward shift of the QRS axis with age: Rijnbeek 2014; with obesity: Fraley MA
# et al., Obes Rev 2005;6:275); LVH and LBBB shift the axis further left. Slopes are estimates.
AZIMUTH_MEAN_DEG: Final[float] = 45.0
AZIMUTH_SD_DEG: Final[float] = 8.0
AZIMUTH_PER_BMI_UNIT_DEG: Final[float] = 0.4
ELEVATION_MEAN_DEG: Final[float] = 45.0
ELEVATION_SD_DEG: Final[float] = 10.0
ELEVATION_PER_YEAR_DEG: Final[float] = -0.3
ELEVATION_PER_BMI_UNIT_DEG: Final[float] = -1.2
ELEVATION_SHIFT_DEG: Final[Mapping[str, float]] = {
    "normal": 0.0, "dilated": -3.0, "hypertrophic": -6.0, "conduction": -10.0,
}
ORIENTATION_REF_BMI: Final[float] = 26.5

# ============================================================================================
# Atrial fibrillation at the time of the ECG
# ============================================================================================
# AF roughly doubles per decade of age and is ~1.5x as common in men (Benjamin EJ et al.,
# JAMA 1994;271:840, Framingham: OR 2.1 per decade); structural heart disease raises it.
# The intercept puts ~1 % of the cohort (2-3 % of those over 72) in AF at the ECG.
AF_LOGIT_AT_64Y_FEMALE: Final[float] = -5.1
AF_LOGIT_PER_YEAR: Final[float] = math.log(2.1) / 10.0
AF_LOGIT_MALE: Final[float] = math.log(1.5)
AF_LOGIT_PER_BMI_UNIT: Final[float] = math.log(1.3) / 5.0
AF_LOGIT_ARCHETYPE: Final[Mapping[str, float]] = {
    "normal": 0.0, "dilated": 1.5, "hypertrophic": 1.3, "conduction": 0.3,
}

# Variates each subject consumes (fixed, whatever branch is taken).
_N_NORMAL: Final[int] = 16
_N_UNIFORM: Final[int] = 16
_STD_NORMAL: Final = NormalDist()


# ============================================================================================
# Public functions
# ============================================================================================
def mosteller_bsa(height_cm: float, weight_kg: float) -> float:
    """Body surface area (m^2) by Mosteller (N Engl J Med 1987;317:1098): sqrt(h*w/3600)."""
    return math.sqrt(height_cm * weight_kg / 3600.0)


def qt_from_qtc_ms(qtc_ms: float, heart_rate_bpm: float) -> float:
    """QT (ms) at this heart rate from a Framingham-corrected QTc (ms) (Sagie 1992)."""
    rr_s = 60.0 / heart_rate_bpm
    return qtc_ms - FRAMINGHAM_QT_SLOPE_MS * (1.0 - rr_s)


def sample_state(rng: np.random.Generator, subject_id: str, *,
                 systolic_coupling: float = DEFAULT_SYSTOLIC_COUPLING) -> dict[str, object]:
    """Draw one subject's latent cardiac state.

    Args:
        rng: the subject's random stream (the only source of randomness).
        subject_id: copied into the state.
        systolic_coupling: how much LVEF moves the heart rate (see
            :data:`DEFAULT_SYSTOLIC_COUPLING`); the draws, and so every other value, are the
            same at any setting.

    Returns:
        A flat dict with exactly the keys of :data:`STATE_KEYS`: ``sex`` int (0 female,
        1 male), ``age_years``, ``height_cm``, ``weight_kg``, ``bmi`` (kg/m^2), ``bsa_m2``
        (Mosteller), ``sbp_mmhg``, ``smoking`` int (UKB 20116), ``alcohol`` int (UKB 1558),
        ``archetype`` str, target geometry ``lvedv_ml``, ``lvef`` (fraction), ``lvm_g``,
        ``rvedv_ml``, ``rvef`` (fraction), ECG ``heart_rate_bpm``, ``pr_ms``, ``qrs_ms``,
        ``qt_ms`` (QT at that heart rate), ``heart_azimuth_deg``, ``heart_elevation_deg``,
        ``in_af`` bool. In AF there is no P wave: ``pr_ms`` is still a finite number (what
        the PR would be in sinus rhythm) and the ECG simulator should ignore it.
    """
    draws = _Draws(rng)
    cov = _sample_covariates(draws)
    archetype = _sample_archetype(draws.uniform())
    in_af = _sample_in_af(draws.uniform(), cov, archetype)
    geom = _sample_geometry(draws, cov)
    _apply_archetype(draws, geom, archetype, systolic_coupling)
    _clip_geometry(geom)
    ecg = _sample_ecg_intervals(draws, cov, geom, archetype, in_af, systolic_coupling)
    azimuth, elevation = _sample_orientation(draws, cov, archetype)
    state: dict[str, object] = {
        "subject_id": str(subject_id),
        "sex": cov["sex"], "age_years": cov["age_years"],
        "height_cm": cov["height_cm"], "weight_kg": cov["weight_kg"],
        "bmi": cov["bmi"], "bsa_m2": cov["bsa_m2"],
        "sbp_mmhg": cov["sbp_mmhg"], "smoking": cov["smoking"], "alcohol": cov["alcohol"],
        "archetype": archetype,
        "lvedv_ml": geom["lvedv_ml"], "lvef": geom["lvef"], "lvm_g": geom["lvm_g"],
        "rvedv_ml": geom["rvedv_ml"], "rvef": geom["rvef"],
        **ecg,
        "heart_azimuth_deg": azimuth, "heart_elevation_deg": elevation,
        "in_af": in_af,
    }
    return state


def states_to_frame(states: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """Many states as one table, plus the derived phenotypes of ``PHENOTYPES`` (EF in %).

    Handy for notebooks that plot the latent targets against :data:`REFERENCE_RANGES`
    (the measured phenotypes come from the rendered CMR, not from here).
    """
    df = pd.DataFrame(list(states), columns=list(STATE_KEYS))
    df["lvesv_ml"] = df["lvedv_ml"] * (1.0 - df["lvef"])
    df["lvsv_ml"] = df["lvedv_ml"] * df["lvef"]
    df["lvef_pct"] = 100.0 * df["lvef"]
    df["rvesv_ml"] = df["rvedv_ml"] * (1.0 - df["rvef"])
    df["rvsv_ml"] = df["rvedv_ml"] * df["rvef"]
    df["rvef_pct"] = 100.0 * df["rvef"]
    return df


# ============================================================================================
# Internals
# ============================================================================================
class _Draws:
    """A fixed block of variates per subject, handed out one by one as Python floats."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._normal = rng.standard_normal(_N_NORMAL).tolist()
        self._uniform = rng.random(_N_UNIFORM).tolist()

    def normal(self) -> float:
        return self._normal.pop()

    def uniform(self) -> float:
        return self._uniform.pop()


def _clip(x: float, bounds: tuple[float, float]) -> float:
    return min(max(x, bounds[0]), bounds[1])


def _categorical(u: float, probs: Sequence[float]) -> int:
    """Index of the category that the uniform ``u`` falls in (probs need not sum exactly to 1)."""
    total = sum(probs)
    acc = 0.0
    for i, p in enumerate(probs):
        acc += p / total
        if u < acc:
            return i
    return len(probs) - 1


def _truncated_normal(u: float, mean: float, sd: float, lo: float, hi: float) -> float:
    """Inverse-CDF draw from a normal truncated to [lo, hi] (no pile-up at the bounds)."""
    a, b = _STD_NORMAL.cdf((lo - mean) / sd), _STD_NORMAL.cdf((hi - mean) / sd)
    p = min(max(a + u * (b - a), 1e-12), 1.0 - 1e-12)
    return _clip(mean + sd * _STD_NORMAL.inv_cdf(p), (lo, hi))


def _sample_covariates(draws: _Draws) -> dict[str, float | int]:
    """Sex, age, body size, blood pressure, smoking and alcohol of one UKB-like subject."""
    sex = MALE if draws.uniform() < P_MALE else FEMALE
    age = _truncated_normal(draws.uniform(), AGE_MEAN_YEARS, AGE_SD_YEARS,
                            AGE_MIN_YEARS, AGE_MAX_YEARS)
    height = (HEIGHT_MEAN_CM[sex] + HEIGHT_SD_CM[sex] * draws.normal()
              - HEIGHT_LOSS_CM_PER_YEAR_OVER_60 * max(age - 60.0, 0.0))
    height = _clip(height, HEIGHT_BOUNDS_CM)
    # BMI is right-skewed: log-normal with the cohort's mean and SD.
    log_sd = math.sqrt(math.log(1.0 + (BMI_SD / BMI_MEAN[sex]) ** 2))
    bmi = math.exp(math.log(BMI_MEAN[sex]) - 0.5 * log_sd**2 + log_sd * draws.normal())
    bmi = _clip(bmi, BMI_BOUNDS)
    weight = _clip(bmi * (height / 100.0) ** 2, WEIGHT_BOUNDS_KG)
    bmi = weight / (height / 100.0) ** 2  # consistent with the clipped weight
    sbp = (SBP_FEMALE_AT_64Y_MMHG + SBP_MALE_EXCESS_MMHG * sex
           + SBP_PER_YEAR_MMHG * (age - AGE_MEAN_YEARS)
           + SBP_PER_BMI_UNIT_MMHG * (bmi - SBP_REF_BMI)
           + SBP_RESIDUAL_SD_MMHG * draws.normal())
    return {
        "sex": sex,
        "age_years": age,
        "height_cm": height,
        "weight_kg": weight,
        "bmi": bmi,
        "bsa_m2": mosteller_bsa(height, weight),
        "sbp_mmhg": _clip(sbp, SBP_BOUNDS_MMHG),
        "smoking": _categorical(draws.uniform(), SMOKING_PROBS[sex]),      # 0, 1, 2
        "alcohol": 1 + _categorical(draws.uniform(), ALCOHOL_PROBS[sex]),  # 1 ... 6
    }


def _sample_archetype(u: float) -> str:
    acc = 0.0
    for name, p in ARCHETYPE_PROBS.items():
        acc += p
        if u < acc:
            return name
    return "normal"


def _sample_in_af(u: float, cov: Mapping[str, float | int], archetype: str) -> bool:
    logit = (AF_LOGIT_AT_64Y_FEMALE + AF_LOGIT_PER_YEAR * (cov["age_years"] - AGE_MEAN_YEARS)
             + AF_LOGIT_MALE * cov["sex"]
             + AF_LOGIT_PER_BMI_UNIT * (cov["bmi"] - BMI_MEAN[FEMALE])
             + AF_LOGIT_ARCHETYPE[archetype])
    return u < 1.0 / (1.0 + math.exp(-logit))


def _expected_log(model: Mapping[int, tuple[float, float]], sex: int, bsa: float,
                  elasticity: float, log_per_year: float, age: float,
                  log_per_mmhg: float, sbp: float) -> tuple[float, float]:
    """(expected log-value from covariates, residual log-SD) of a log-normal phenotype."""
    mu, resid_sd = model[sex]
    expected = (mu + elasticity * math.log(bsa / REF_BSA_M2[sex])
                + log_per_year * (age - REF_AGE_YEARS)
                + log_per_mmhg * (sbp - REF_SBP_MMHG))
    return expected, resid_sd


def _sample_geometry(draws: _Draws, cov: Mapping[str, float | int]) -> dict[str, float]:
    """Healthy-heart geometry from the structural model (before any archetype)."""
    sex, age, bsa, sbp = cov["sex"], cov["age_years"], cov["bsa_m2"], cov["sbp_mmhg"]
    z_size = draws.normal()  # shared heart-size factor

    def correlated(loading: float) -> float:
        return loading * z_size + math.sqrt(1.0 - loading**2) * draws.normal()

    lv_exp, lv_sd = _expected_log(_LVEDV_LOG, sex, bsa, BSA_ELASTICITY_VOLUME,
                                  LOG_VOLUME_PER_YEAR, age, LOG_EDV_PER_MMHG, sbp)
    rv_exp, rv_sd = _expected_log(_RVEDV_LOG, sex, bsa, BSA_ELASTICITY_VOLUME,
                                  LOG_VOLUME_PER_YEAR, age, 0.0, sbp)
    m_exp, m_sd = _expected_log(_LVM_LOG, sex, bsa, BSA_ELASTICITY_MASS,
                                LOG_LVM_PER_YEAR[sex], age, LOG_LVM_PER_MMHG, sbp)
    lvef_mean, lvef_sd = reference_mean_sd("lvef_pct", sex)
    rvef_mean, rvef_sd = reference_mean_sd("rvef_pct", sex)
    z_ef = draws.normal()
    z_rvef = EF_CORRELATION_LV_RV * z_ef + math.sqrt(1 - EF_CORRELATION_LV_RV**2) * draws.normal()
    rvef_age = RVEF_PCT_PER_YEAR * (age - REF_AGE_YEARS)
    return {
        "lvedv_ml": math.exp(lv_exp + lv_sd * correlated(SIZE_LOADING_LV)),
        "rvedv_ml": math.exp(rv_exp + rv_sd * correlated(SIZE_LOADING_RV)),
        "lvm_g": math.exp(m_exp + m_sd * correlated(SIZE_LOADING_MASS)),
        "lvef": (lvef_mean + lvef_sd * z_ef) / 100.0,
        "rvef": (rvef_mean + rvef_age + rvef_sd * z_rvef) / 100.0,
        # what a healthy heart of this body size and age would have (for ECG terms below)
        "lvedv_expected_ml": math.exp(lv_exp),
        "lvm_expected_g": math.exp(m_exp),
        "lvsv_expected_ml": math.exp(lv_exp) * lvef_mean / 100.0,
        "extra_qrs_ms": 0.0,
    }


def _apply_archetype(draws: _Draws, geom: dict[str, float], archetype: str,
                     systolic_coupling: float) -> None:
    """Turn a healthy geometry into the archetype's (in place). Always consumes 5 uniforms.

    The archetypes' effects on systolic function (LVEF, RVEF) are scaled by
    ``min(systolic_coupling, 1)``: the ECG shows the archetype (conduction delay, dilation's
    QRS widening), so an archetype that also set the EF would carry systolic information to the
    ECG around ED anatomy. At coupling 0 every archetype keeps its healthy EF draw; at 1 and
    above the archetypes are as cited (bit for bit: ``x - 0.0 * (...)`` is ``x``).
    """
    u = [draws.uniform() for _ in range(5)]
    keep = 1.0 - min(systolic_coupling, 1.0)     # the share of the healthy EF kept

    def between(bounds: tuple[float, float], ui: float) -> float:
        return bounds[0] + (bounds[1] - bounds[0]) * ui

    def toward(healthy: float, diseased: float) -> float:
        return diseased - keep * (diseased - healthy)

    if archetype == "dilated":
        geom["lvedv_ml"] *= between(DILATED_EDV_FACTOR, u[0])
        geom["lvef"] = toward(geom["lvef"], between(DILATED_EF, u[1]))
        geom["lvm_g"] *= between(DILATED_LVM_FACTOR, u[2])
        geom["rvedv_ml"] *= between(DILATED_RVEDV_FACTOR, u[3])
        geom["rvef"] = toward(geom["rvef"],
                              geom["rvef"] - between(DILATED_RVEF_DROP_PCT, u[4]) / 100.0)
        geom["extra_qrs_ms"] = between(DILATED_EXTRA_QRS_MS, u[0])  # more dilated, more delay
    elif archetype == "hypertrophic":
        geom["lvm_g"] *= between(HYPERTROPHIC_LVM_FACTOR, u[0])
        geom["lvedv_ml"] *= between(HYPERTROPHIC_EDV_FACTOR, u[1])
        geom["lvef"] = toward(geom["lvef"], between(HYPERTROPHIC_EF, u[2]))
    elif archetype == "conduction":
        geom["lvef"] = toward(geom["lvef"], geom["lvef"] - between(CONDUCTION_EF_DROP, u[0]))
        geom["lvedv_ml"] *= between(CONDUCTION_EDV_FACTOR, u[1])


def _clip_geometry(geom: dict[str, float]) -> None:
    geom["lvedv_ml"] = _clip(geom["lvedv_ml"], LVEDV_BOUNDS_ML)
    geom["rvedv_ml"] = _clip(geom["rvedv_ml"], RVEDV_BOUNDS_ML)
    geom["lvm_g"] = _clip(geom["lvm_g"], LVM_BOUNDS_G)
    geom["lvef"] = _clip(geom["lvef"], LVEF_BOUNDS)
    geom["rvef"] = _clip(geom["rvef"], RVEF_BOUNDS)


def _sample_ecg_intervals(draws: _Draws, cov: Mapping[str, float | int],
                          geom: Mapping[str, float], archetype: str, in_af: bool,
                          systolic_coupling: float) -> dict[str, float]:
    """Heart rate, PR, QRS and QT (at that heart rate), in bpm and ms."""
    sex, age = cov["sex"], cov["age_years"]
    lvsv = geom["lvedv_ml"] * geom["lvef"]
    # log(SV / expected SV) = log(EDV / expected EDV) + log(EF / reference EF); only the EF
    # part is scaled (subtracting exactly 0.0 at coupling 1 keeps the default world's bits)
    log_sv = (math.log(lvsv / geom["lvsv_expected_ml"]) - (1.0 - systolic_coupling)
              * math.log(100.0 * geom["lvef"] / reference_mean_sd("lvef_pct", sex)[0]))
    log_hr = (math.log(HR_BASE_BPM[sex]) + HR_LOG_PER_YEAR * (age - REF_AGE_YEARS)
              + HR_LOG_PER_BMI_UNIT * (cov["bmi"] - BMI_MEAN[sex])
              + HR_LOG_CURRENT_SMOKER * (cov["smoking"] == 2)
              + HR_LOG_PER_LOG_SV * log_sv
              + systolic_coupling * HR_LOG_PER_EF_POINT_BELOW_50
              * max(0.0, 50.0 - 100.0 * geom["lvef"])
              + HR_LOG_IN_AF * in_af
              + HR_LOG_SD * draws.normal())
    hr = _clip(math.exp(log_hr), HR_BOUNDS_BPM)

    pr = (PR_BASE_MS[sex] + PR_PER_YEAR_MS * (age - REF_AGE_YEARS)
          + PR_PER_BPM_MS * (hr - HR_BASE_BPM[sex])
          + CONDUCTION_EXTRA_PR_MS * (archetype == "conduction")
          + PR_SD_MS * draws.normal())
    pr = _clip(pr, PR_BOUNDS_MS)

    lvedv_ref, _ = reference_mean_sd("lvedv_ml", sex)
    lvm_ref, _ = reference_mean_sd("lvm_g", sex)
    log_lvm_rel = math.log(geom["lvm_g"] / lvm_ref)
    z_qrs = draws.normal()
    u_qrs = draws.uniform()
    if archetype == "conduction":
        qrs = CONDUCTION_QRS_MS[0] + (CONDUCTION_QRS_MS[1] - CONDUCTION_QRS_MS[0]) * u_qrs
    else:
        qrs = (QRS_BASE_MS[sex] + QRS_PER_LOG_EDV_MS * math.log(geom["lvedv_ml"] / lvedv_ref)
               + QRS_PER_LOG_LVM_MS * log_lvm_rel + QRS_PER_YEAR_MS * (age - REF_AGE_YEARS)
               + geom["extra_qrs_ms"] + QRS_SD_MS * z_qrs)
    qrs = _clip(qrs, QRS_BOUNDS_MS)

    qtc = (QTC_BASE_MS[sex] + QTC_PER_YEAR_MS * (age - REF_AGE_YEARS)
           + QTC_PER_MS_QRS_WIDENING * (qrs - QRS_BASE_MS[sex])
           + QTC_PER_LOG_LVM_MS * log_lvm_rel + QTC_SD_MS * draws.normal())
    qt = _clip(qt_from_qtc_ms(qtc, hr), QT_BOUNDS_MS)
    return {"heart_rate_bpm": hr, "pr_ms": pr, "qrs_ms": qrs, "qt_ms": qt}


def _sample_orientation(draws: _Draws, cov: Mapping[str, float | int],
                        archetype: str) -> tuple[float, float]:
    """(azimuth, elevation) of the LV long axis in degrees; more horizontal with age and BMI."""
    d_bmi = cov["bmi"] - ORIENTATION_REF_BMI
    azimuth = AZIMUTH_MEAN_DEG + AZIMUTH_PER_BMI_UNIT_DEG * d_bmi + AZIMUTH_SD_DEG * draws.normal()
    elevation = (ELEVATION_MEAN_DEG + ELEVATION_PER_YEAR_DEG * (cov["age_years"] - REF_AGE_YEARS)
                 + ELEVATION_PER_BMI_UNIT_DEG * d_bmi + ELEVATION_SHIFT_DEG[archetype]
                 + ELEVATION_SD_DEG * draws.normal())
    return _clip(azimuth, AZIMUTH_BOUNDS_DEG), _clip(elevation, ELEVATION_BOUNDS_DEG)
