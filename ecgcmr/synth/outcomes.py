"""Diagnoses and time-to-event outcomes of one synthetic subject, from its latent state.

For each condition ``c`` of ``ecgcmr.constants.CONDITIONS`` :func:`sample_outcomes` returns

* ``c_ever``       0/1: diagnosed at any time (prevalent at imaging OR incident later) - the
                   paper's "ever diagnosed" label;
* ``c_event``      0/1: incident event after imaging; NaN for subjects who already had the
                   condition at imaging (they are not at risk);
* ``c_time_years`` years from imaging to the event or to censoring; NaN where ``c_event`` is.

The model, per condition:

1. **Prevalent at imaging**: logistic, log-odds = intercept + the same linear predictor as the
   hazard (age, sex, smoking, SBP, BMI, LVEF, LV mass indexed to BSA, QRS, archetype, in_af,
   alcohol, and the conditions already drawn as prevalent).
2. **Incident**: proportional hazards with a Weibull baseline, h(t) = lambda * rho * t^(rho-1)
   * exp(lp); the log-hazard lp is linear in the state, with the hazard ratios of
   :data:`HAZARD_RATIOS` (each commented with where its size comes from).
3. **Censoring**: administrative, uniform 3-9 years (imaging 2014-2020, records to ~2023), and
   death from other causes (Gompertz in age), whichever comes first.
4. **Logic**: MI implies CAD (a prevalent MI makes CAD prevalent; an incident MI is an incident
   CAD at the latest on the same day); being in AF on the ECG implies prevalent AF.

Intercepts and baseline scales are calibrated (by simulation of the synthetic cohort) so that
"ever" prevalences fall in the bands of :data:`TARGET_EVER_PREVALENCE`.
Randomness only through the passed generator; every call consumes a fixed number of variates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

import numpy as np

from ecgcmr.constants import CONDITIONS

# ============================================================================================
# Targets
# ============================================================================================
#: Rough "ever diagnosed" prevalence wanted in the imaging cohort (fraction). UK Biobank imaging
#: participants: AF a few %, CAD ~5-8 %, HF < ~1 %, cardiomyopathy ~0.3-0.5 %, MI ~2 %, cardiac
#: arrest ~0.2 % (project brief; consistent with an MI incidence of 7.8 (women) and 24.4 (men)
#: per 10,000 person-years at a mean age of 56 in UKB, Millett ERC et al., BMJ 2018;363:k4247).
TARGET_EVER_PREVALENCE: Final[Mapping[str, float]] = {
    "cad": 0.07, "af": 0.045, "hf": 0.010, "cardiomyopathy": 0.0045, "mi": 0.022,
    "cardiac_arrest": 0.0025,
}

# ============================================================================================
# Follow-up
# ============================================================================================
# Imaging 2014-2020, hospital records to ~2023: administrative censoring uniform over 3-9 years.
FOLLOW_UP_YEARS: Final[tuple[float, float]] = (3.0, 9.0)
# Weibull shape > 1: the hazard rises during follow-up as subjects age (with an age HR of ~2 per
# decade, 5 years of ageing multiply the hazard by ~1.4, which a shape of 1.2 approximates).
WEIBULL_SHAPE: Final[float] = 1.2

# ============================================================================================
# Risk features: what the linear predictor is made of, centred on a typical subject
# ============================================================================================
AGE_CENTRE_YEARS: Final[float] = 64.0
SBP_CENTRE_MMHG: Final[float] = 140.0
BMI_CENTRE: Final[float] = 27.0
LVEF_CENTRE_PCT: Final[float] = 55.0
LVMI_CENTRE_G_PER_M2: Final[float] = 50.0
QRS_CENTRE_MS: Final[float] = 90.0

#: Prevalent conditions that may enter later conditions' linear predictors, in drawing order.
PREVALENCE_ORDER: Final[tuple[str, ...]] = (
    "cad", "mi", "af", "cardiomyopathy", "hf", "cardiac_arrest",
)

# ============================================================================================
# Hazard ratios (also used as odds ratios for prevalence at imaging)
# ============================================================================================
# Units of each feature:
#   age_per_10y        per 10 years above 64
#   male               men vs women
#   smoking_previous   previous vs never (UKB 20116 = 1)
#   smoking_current    current vs never (UKB 20116 = 2)
#   sbp_per_20         per 20 mmHg systolic above 140
#   bmi_per_5          per 5 kg/m^2 above 27
#   ef_per_10_lower    per 10 EF points BELOW 55 % (negative above)
#   lvmi_per_10        per 10 g/m^2 LV mass index above 50
#   qrs_per_10         per 10 ms QRS above 90
#   alcohol_daily      daily or almost daily drinker (UKB 1558 = 1)
#   in_af              in atrial fibrillation on the imaging-visit ECG
#   dilated, hypertrophic, conduction   archetype vs normal
#   prev_<c>           condition c already diagnosed at imaging
#
# Sources (approximate effect sizes; where a published estimate is for a related quantity the
# conversion is stated):
# - age: AF OR 2.1 per decade (Benjamin EJ et al., JAMA 1994;271:840, Framingham); CAD, MI and
#   HF incidence roughly double per decade in middle age (Framingham risk functions); MI crude
#   incidence in UKB (Millett 2018).
# - sex: MI incidence men/women 24.4/7.8 per 10,000 py in UKB (Millett 2018), ~2.5 adjusted;
#   AF 1.5x in men (Benjamin 1994); sudden cardiac arrest 2-3x in men.
# - smoking: current smoking HR for MI 2.2 (men) to 3.5 (women) (Millett 2018); AF RR ~1.3
#   for current smokers (Aune D et al., Eur J Prev Cardiol 2018;25:1437).
# - SBP: IHD risk doubles per 20 mmHg usual SBP (Lewington S et al., Lancet 2002;360:1903),
#   attenuated here (~1.35-1.4) because one measurement is noisier than usual BP.
# - BMI: IHD HR ~1.39 per 5 kg/m^2 (Prospective Studies Collaboration, Lancet 2009;373:1083);
#   HF +5 % (men) / +7 % (women) per BMI unit (Kenchaiah S et al., N Engl J Med 2002;347:305);
#   AF: obesity RR ~1.5 (Wanahita N et al., Am Heart J 2008;155:310).
# - LVEF: asymptomatic LV systolic dysfunction HR ~4.7 for incident HF (Wang TJ et al.,
#   Circulation 2003;108:977) -> ~2 per 10 EF points; low EF is the main SCD risk marker.
# - LV mass: RR ~1.5 for CVD per 50 g/m of LV mass/height (Levy D et al., N Engl J Med
#   1990;322:1561) -> ~1.1-1.25 per 10 g/m^2 of mass/BSA.
# - QRS: HF HR ~1.2 per SD (~10 ms) of QRS duration (Dhingra R et al., Hypertension
#   2006;47:861, Framingham); QRS > 110 ms doubles SCD risk (Aro AL et al., Circ Arrhythm
#   Electrophysiol 2011;4:704).
# - alcohol: AF RR 1.08 per 10 g/day (Kodama S et al., J Am Coll Cardiol 2011;57:427);
#   moderate drinking slightly lower CAD risk; alcohol-related cardiomyopathy.
# - AF -> HF: new HF in people with AF 33 per 1000 py (Wang TJ et al., Circulation
#   2003;107:2920), HR ~2-3 vs no AF.
# - archetypes: a dilated or hypertrophic ventricle is what a cardiomyopathy diagnosis looks
#   for (large HRs); LBBB-like conduction HR ~1.5-2 for HF (Zhang ZM et al., Circ Heart Fail
#   2012;5:424, WHI); HCM carries AF in ~20 % (4-6x) - we use smaller, population-level sizes.
_BASE_HR: Final[dict[str, float]] = {
    "age_per_10y": 1.0, "male": 1.0, "smoking_previous": 1.0, "smoking_current": 1.0,
    "sbp_per_20": 1.0, "bmi_per_5": 1.0, "ef_per_10_lower": 1.0, "lvmi_per_10": 1.0,
    "qrs_per_10": 1.0, "alcohol_daily": 1.0, "in_af": 1.0,
    "dilated": 1.0, "hypertrophic": 1.0, "conduction": 1.0,
    "prev_cad": 1.0, "prev_mi": 1.0, "prev_af": 1.0, "prev_cardiomyopathy": 1.0, "prev_hf": 1.0,
}


def _hrs(**hr: float) -> dict[str, float]:
    unknown = set(hr) - set(_BASE_HR)
    if unknown:
        raise KeyError(f"unknown risk features {sorted(unknown)}")
    return {**_BASE_HR, **hr}


#: Hazard ratio per unit of each risk feature (see the units above), per condition.
HAZARD_RATIOS: Final[Mapping[str, Mapping[str, float]]] = {
    "cad": _hrs(age_per_10y=1.9, male=2.0, smoking_previous=1.2, smoking_current=2.0,
                sbp_per_20=1.35, bmi_per_5=1.25, ef_per_10_lower=1.1, lvmi_per_10=1.1,
                alcohol_daily=0.9, hypertrophic=1.1),
    "mi": _hrs(age_per_10y=1.7, male=2.5, smoking_previous=1.2, smoking_current=2.5,
               sbp_per_20=1.4, bmi_per_5=1.2, ef_per_10_lower=1.15, lvmi_per_10=1.1,
               qrs_per_10=1.05, alcohol_daily=0.9, in_af=1.2, hypertrophic=1.1,
               prev_cad=3.0),
    "af": _hrs(age_per_10y=2.1, male=1.5, smoking_previous=1.1, smoking_current=1.3,
               sbp_per_20=1.2, bmi_per_5=1.3, ef_per_10_lower=1.2, lvmi_per_10=1.15,
               qrs_per_10=1.05, alcohol_daily=1.2, dilated=1.5, hypertrophic=2.5,
               conduction=1.2, prev_cad=1.2, prev_mi=1.2, prev_cardiomyopathy=1.5),
    "cardiomyopathy": _hrs(age_per_10y=1.3, male=1.8, smoking_current=1.2, sbp_per_20=1.1,
                           bmi_per_5=1.2, ef_per_10_lower=2.5, lvmi_per_10=1.3,
                           qrs_per_10=1.2, alcohol_daily=1.3, in_af=1.5, dilated=30.0,
                           hypertrophic=60.0, conduction=4.0, prev_af=1.5),
    "hf": _hrs(age_per_10y=2.2, male=1.6, smoking_previous=1.2, smoking_current=1.6,
               sbp_per_20=1.4, bmi_per_5=1.4, ef_per_10_lower=2.0, lvmi_per_10=1.25,
               qrs_per_10=1.2, in_af=1.2, dilated=3.0, hypertrophic=2.0, conduction=1.8,
               prev_cad=1.8, prev_mi=2.5, prev_af=2.5, prev_cardiomyopathy=3.0),
    "cardiac_arrest": _hrs(age_per_10y=1.6, male=2.5, smoking_previous=1.2,
                           smoking_current=2.0, sbp_per_20=1.2, bmi_per_5=1.15,
                           ef_per_10_lower=1.8, lvmi_per_10=1.2, qrs_per_10=1.2, in_af=1.5,
                           dilated=3.0, hypertrophic=3.0, conduction=1.5, prev_cad=2.0,
                           prev_mi=2.5, prev_af=1.3, prev_cardiomyopathy=2.5, prev_hf=2.0),
}

# log(HR) per feature, computed once (the sampler evaluates ~12 linear predictors per subject).
_LOG_HR: Final[dict[str, dict[str, float]]] = {
    cond: {name: math.log(hr) for name, hr in hrs.items()} for cond, hrs in HAZARD_RATIOS.items()
}

#: Log-odds of being diagnosed at imaging for a subject with all features at the centre
#: (calibrated by simulation to the split of TARGET_EVER_PREVALENCE into prevalent/incident).
PREVALENCE_INTERCEPT: Final[Mapping[str, float]] = {
    "cad": -3.91, "mi": -5.29, "af": -5.54, "cardiomyopathy": -9.72, "hf": -7.13,
    "cardiac_arrest": -9.57,
}
#: Weibull scale lambda (per year^rho) of the incident hazard at the centre (calibrated).
BASELINE_HAZARD: Final[Mapping[str, float]] = {
    "cad": 1.20e-3, "mi": 4.63e-4, "af": 1.95e-3, "cardiomyopathy": 8.7e-6, "hf": 1.62e-4,
    "cardiac_arrest": 4.2e-5,
}
#: Split of TARGET_EVER_PREVALENCE used for the calibration: prevalent at imaging (the rest is
#: incident during follow-up).
TARGET_PREVALENT_AT_IMAGING: Final[Mapping[str, float]] = {
    "cad": 0.045, "mi": 0.012, "af": 0.018, "cardiomyopathy": 0.002, "hf": 0.0035,
    "cardiac_arrest": 0.0006,
}

# ============================================================================================
# Death from other causes (competing risk that censors follow-up)
# ============================================================================================
# Gompertz: all-cause mortality doubles every ~8 years of age; ~0.5 %/year at 64 in women of
# the (healthy-volunteer) UKB imaging cohort (estimate; ONS England & Wales life tables give
# ~0.7 %/year at 64 for women). HRs: men 1.5, current smokers 2.0 (Doll R et al., BMJ
# 2004;328:1519 give ~2-3), heart failure 3, per 10 EF points lower 1.3.
DEATH_RATE_AT_CENTRE_PER_YEAR: Final[float] = 0.005
DEATH_GOMPERTZ_PER_YEAR: Final[float] = math.log(2.0) / 8.0
DEATH_HAZARD_RATIOS: Final[Mapping[str, float]] = {
    "male": 1.5, "smoking_current": 2.0, "prev_hf": 3.0, "ef_per_10_lower": 1.3,
}

# Variates each subject consumes: per condition one uniform (prevalence) and one exponential
# (event time); plus one for death and one for administrative censoring.
_N_UNIFORM: Final[int] = len(CONDITIONS) + 1
_N_EXPONENTIAL: Final[int] = len(CONDITIONS) + 1

OUTCOME_SUFFIXES: Final[tuple[str, ...]] = ("_ever", "_event", "_time_years")
#: Keys of the dict :func:`sample_outcomes` returns.
OUTCOME_KEYS: Final[tuple[str, ...]] = tuple(c + s for c in CONDITIONS for s in OUTCOME_SUFFIXES)

assert set(HAZARD_RATIOS) == set(CONDITIONS) == set(PREVALENCE_ORDER)


# ============================================================================================
# Public functions
# ============================================================================================
def risk_features(state: Mapping[str, object]) -> dict[str, float]:
    """The state's risk features (see the units above HAZARD_RATIOS), without prevalent flags."""
    lvmi = float(state["lvm_g"]) / float(state["bsa_m2"])
    archetype = str(state["archetype"])
    smoking = int(state["smoking"])
    return {
        "age_per_10y": (float(state["age_years"]) - AGE_CENTRE_YEARS) / 10.0,
        "male": float(int(state["sex"]) == 1),
        "smoking_previous": float(smoking == 1),
        "smoking_current": float(smoking == 2),
        "sbp_per_20": (float(state["sbp_mmhg"]) - SBP_CENTRE_MMHG) / 20.0,
        "bmi_per_5": (float(state["bmi"]) - BMI_CENTRE) / 5.0,
        "ef_per_10_lower": (LVEF_CENTRE_PCT - 100.0 * float(state["lvef"])) / 10.0,
        "lvmi_per_10": (lvmi - LVMI_CENTRE_G_PER_M2) / 10.0,
        "qrs_per_10": (float(state["qrs_ms"]) - QRS_CENTRE_MS) / 10.0,
        "alcohol_daily": float(int(state["alcohol"]) == 1),
        "in_af": float(bool(state["in_af"])),
        "dilated": float(archetype == "dilated"),
        "hypertrophic": float(archetype == "hypertrophic"),
        "conduction": float(archetype == "conduction"),
    }


def linear_predictor(condition: str, features: Mapping[str, float],
                     prevalent: Mapping[str, bool]) -> float:
    """Log hazard ratio of ``condition`` relative to a subject at the centre.

    ``prevalent`` holds the conditions diagnosed at imaging (a condition never enters its own
    linear predictor).
    """
    log_hr = _LOG_HR[condition]
    lp = sum(log_hr[name] * value for name, value in features.items())
    for other, present in prevalent.items():
        if present and other != condition:
            lp += log_hr.get(f"prev_{other}", 0.0)
    return lp


def weibull_event_time(exp_draw: float, scale: float, shape: float, log_hr: float) -> float:
    """Event time (years) with cumulative hazard H(t) = scale * exp(log_hr) * t**shape.

    ``exp_draw`` is a standard exponential variate E: the time solves H(T) = E.
    """
    return (exp_draw / (scale * math.exp(log_hr))) ** (1.0 / shape)


def gompertz_death_time(exp_draw: float, rate_at_entry: float, gompertz: float) -> float:
    """Death time (years) with hazard rate_at_entry * exp(gompertz * t)."""
    return math.log1p(gompertz * exp_draw / rate_at_entry) / gompertz


def sample_outcomes(state: Mapping[str, object], rng: np.random.Generator) -> dict[str, float]:
    """Draw the diagnoses and incident events of one subject.

    Args:
        state: a latent state from :func:`ecgcmr.synth.physiology.sample_state`.
        rng: the subject's outcome stream.

    Returns:
        For each condition c in CONDITIONS: ``c_ever`` (int 0/1), ``c_event`` (float 0/1, NaN
        if prevalent at imaging), ``c_time_years`` (float years to event or censoring, NaN if
        prevalent), keyed in the order of :data:`OUTCOME_KEYS`.
    """
    uniforms = rng.random(_N_UNIFORM).tolist()
    exps = rng.standard_exponential(_N_EXPONENTIAL).tolist()
    features = risk_features(state)

    prevalent = _sample_prevalent(uniforms, features, bool(state["in_af"]))

    # Censoring: end of records or death from other causes, whichever first.
    admin = FOLLOW_UP_YEARS[0] + (FOLLOW_UP_YEARS[1] - FOLLOW_UP_YEARS[0]) * uniforms[-1]
    death = gompertz_death_time(exps[-1], _death_rate(features, prevalent),
                                DEATH_GOMPERTZ_PER_YEAR)
    censor = min(admin, death)

    times = {}
    for i, cond in enumerate(CONDITIONS):
        lp = linear_predictor(cond, features, prevalent)
        times[cond] = weibull_event_time(exps[i], BASELINE_HAZARD[cond], WEIBULL_SHAPE, lp)
    # An MI is coronary artery disease: CAD is diagnosed with the MI at the latest.
    if not prevalent["cad"] and not prevalent["mi"]:
        times["cad"] = min(times["cad"], times["mi"])

    out: dict[str, float] = {}
    for cond in CONDITIONS:
        if prevalent[cond]:
            out[f"{cond}_ever"] = 1
            out[f"{cond}_event"] = math.nan
            out[f"{cond}_time_years"] = math.nan
        else:
            event = times[cond] <= censor
            out[f"{cond}_ever"] = int(event)
            out[f"{cond}_event"] = float(event)
            out[f"{cond}_time_years"] = times[cond] if event else censor
    return {key: out[key] for key in OUTCOME_KEYS}


# ============================================================================================
# Internals
# ============================================================================================
def _sample_prevalent(uniforms: list[float], features: Mapping[str, float],
                      in_af: bool) -> dict[str, bool]:
    """Which conditions are already diagnosed at imaging (drawn in PREVALENCE_ORDER)."""
    prevalent = {c: False for c in CONDITIONS}
    for cond in PREVALENCE_ORDER:
        logit = PREVALENCE_INTERCEPT[cond] + linear_predictor(cond, features, prevalent)
        u = uniforms[CONDITIONS.index(cond)]
        prevalent[cond] = u < 1.0 / (1.0 + math.exp(-logit))
    prevalent["af"] = prevalent["af"] or in_af   # in AF on the ECG -> AF is diagnosed
    prevalent["cad"] = prevalent["cad"] or prevalent["mi"]  # MI implies CAD
    return prevalent


def _death_rate(features: Mapping[str, float], prevalent: Mapping[str, bool]) -> float:
    """Hazard of death from other causes at the start of follow-up (per year)."""
    log_hr = (DEATH_GOMPERTZ_PER_YEAR * 10.0 * features["age_per_10y"]
              + math.log(DEATH_HAZARD_RATIOS["male"]) * features["male"]
              + math.log(DEATH_HAZARD_RATIOS["smoking_current"]) * features["smoking_current"]
              + math.log(DEATH_HAZARD_RATIOS["ef_per_10_lower"]) * features["ef_per_10_lower"]
              + math.log(DEATH_HAZARD_RATIOS["prev_hf"]) * prevalent["hf"])
    return DEATH_RATE_AT_CENTRE_PER_YEAR * math.exp(log_hr)
