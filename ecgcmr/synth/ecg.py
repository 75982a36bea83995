"""A 12-lead ECG from the latent cardiac state: heart vector -> electrode potentials -> leads.

The path is physical, in three steps, so the lead relations of a real ECG hold by construction:

1. **Heart vector** (mA*cm): the cardiac dipole over time, built beat by beat from a few
   oriented lobes (compact raised-cosine or asymmetric bumps in time, each with a fixed
   direction): P (right then left atrium), QRS (septal, antero-apical, LV free wall, basal
   terminal; an LBBB-like sequence for the "conduction" archetype), T (roughly concordant with
   the QRS; discordant with LBBB, flattened or inverted with LV strain). Each lobe sits at the
   site of the tissue it stands for (a "moving dipole"), so the array is ``(3 S, T)`` for the
   S sites of :data:`SITES`. The loop is built for a reference heart orientation and rotated
   with the anatomical long axis of the state. Beat times follow the state's heart rate with
   respiratory sinus arrhythmia, or an irregular ventricular response with fibrillatory waves
   and no P wave in AF.
2. **Electrode potentials** (``(9, T)``, mV) for RA, LA, LL, V1-V6: dipoles in a homogeneous
   volume conductor, phi = p.r / (4 pi sigma |r|^3), with |r|^2 softened by the finite size of
   the heart (a point dipole over-states the near field of the precordial electrodes). The
   precordial electrodes sit on an elliptical chest wall that moves away from the heart with
   subcutaneous fat (BMI) and, for V3-V6 in women, breast tissue; the limb electrodes sit at
   effective positions in the frontal plane (Einthoven's triangle, the foot closer, as in
   Burger's triangle). Electrode placement jitters from record to record. Noise is added here,
   per electrode: baseline wander, 50 Hz mains pick-up, muscle (EMG) noise.
3. **Leads** (``(12, T)``, mV) from the electrode potentials, as an electrocardiograph does:
   I = LA-RA, II = LL-RA, III = LL-LA, Goldberger's augmented leads, and V1-V6 against
   Wilson's central terminal. Einthoven's (III = II - I) and Goldberger's (aVR + aVL + aVF = 0)
   relations therefore hold exactly, noise included.

Structure leaves a partial, noisy trace: the QRS dipole grows with LV mass and (less) with LV
volume; intervals (PR, QRS, QT) and the heart rate are the state's; the electrical axis follows
the anatomical axis; hypertrophy and low EF flatten or invert the lateral T wave. Much of the
variance has nothing to do with anatomy: per-subject amplitude and direction scatter of every
lobe, electrode placement, body habitus and noise.

Coordinates: x to the patient's left, y anterior, z superior; cm; origin at the electrical
centre of the heart. All randomness comes from the passed ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from ecgcmr.constants import DEFAULT_SYSTOLIC_COUPLING, LEADS
from ecgcmr.errors import DataError

# ============================================================================================
# Electrodes and leads
# ============================================================================================
#: Electrodes whose potentials the simulator computes (the right-leg electrode is ground).
ELECTRODES: Final[tuple[str, ...]] = ("RA", "LA", "LL", "V1", "V2", "V3", "V4", "V5", "V6")


def _lead_matrix() -> np.ndarray:
    """(12, 9): leads (``LEADS`` order) as linear combinations of the electrode potentials."""
    ra, la, ll = np.eye(9)[0], np.eye(9)[1], np.eye(9)[2]
    wilson = (ra + la + ll) / 3.0  # Wilson's central terminal
    rows = {
        "I": la - ra,
        "II": ll - ra,
        "III": ll - la,
        "aVR": ra - (la + ll) / 2.0,  # Goldberger's augmented leads
        "aVL": la - (ra + ll) / 2.0,
        "aVF": ll - (ra + la) / 2.0,
    }
    for i, name in enumerate(("V1", "V2", "V3", "V4", "V5", "V6")):
        rows[name] = np.eye(9)[3 + i] - wilson
    return np.stack([rows[name] for name in LEADS])


LEAD_MATRIX: Final[np.ndarray] = _lead_matrix()  # (12, 9)

# Volume conductor. phi[mV] = K p[mA cm] cos(angle) / r[cm]^2 with K = 100 / (4 pi sigma) for
# sigma in S/m; sigma = 0.2 S/m is a typical bulk torso conductivity (Geselowitz DB, Proc IEEE
# 1989;77:857, homogeneous-torso models). The insulating body surface roughly doubles surface
# potentials (method of images); that factor and the true dipole strength are absorbed into
# the dipole amplitudes below, which are calibrated to clinical amplitude norms.
TORSO_CONDUCTIVITY_S_PER_M: Final[float] = 0.2
K_MV_CM2_PER_MA_CM: Final[float] = 100.0 / (4.0 * math.pi * TORSO_CONDUCTIVITY_S_PER_M)
# The heart is an extended source (~10 cm across), not a point: softening |r|^2 by rho^2 keeps
# the precordial electrodes (6-8 cm from the heart's centre) from a point dipole's blow-up.
SOURCE_RADIUS_CM: Final[float] = 5.0
# The equivalent dipole moves as activation spreads ("moving dipole"; e.g. Gulrajani RM,
# Bioelectricity and Biomagnetism, Wiley 1998, ch. 9): each lobe of the heart vector sits at
# the centre of the tissue it stands for. Positions (cm from the heart's electrical centre,
# x left, y anterior, z superior) for the reference anatomy, rotated with the subject's long
# axis; ventricular sites scale with the cube root of LV volume (a dilated LV reaches closer to
# the lateral chest wall). Our estimates from standard cardiac anatomy.
SOURCE_SITES_CM: Final[Mapping[str, tuple[float, float, float]]] = {
    "septum": (-0.5, 1.0, 0.5),
    "apex": (1.5, 1.5, -2.5),
    "lv_wall": (4.5, 0.5, -1.5),
    "base": (0.0, -2.5, 2.0),
    "ventricles": (1.0, 0.0, -0.5),   # repolarisation (T), spread over both ventricles
    "ra": (-3.0, 0.0, 3.5),
    "la": (0.5, -3.5, 3.5),
    "atria": (-1.0, -2.0, 3.5),       # fibrillatory waves
}
SITES: Final[tuple[str, ...]] = tuple(SOURCE_SITES_CM)
_ATRIAL_SITES: Final[frozenset[str]] = frozenset({"ra", "la", "atria"})

# Chest geometry of a lean adult (BMI 22, height 170 cm): elliptical cross-section of the
# thorax with half-width 15 cm and half-depth 10 cm (AP thoracic diameter ~12 cm inside the
# ribs in adults, Lim SJ et al., Tuberc Respir Dis 2018;81:123, plus chest wall); the heart's
# electrical centre ~2 cm left of the midline and ~7 cm behind the anterior skin (our
# estimates from standard chest anatomy, tuned with the limb-electrode radius and the source
# radius so that the single-dipole lead vectors of the reference torso approximate Dower's
# matrix: Dower GE et al., J Electrocardiol 1988;21 Suppl:S182; e.g. V5/I ~1.9 vs 1.8,
# V1(x)/I ~-0.8 vs -0.8, V2(anterior)/I ~1.8 vs 2.2, II(inferior)/I ~1.6 vs 1.7).
REF_HEIGHT_CM: Final[float] = 170.0
REF_BMI: Final[float] = 22.0
THORAX_HALF_WIDTH_CM: Final[float] = 15.0
THORAX_HALF_DEPTH_CM: Final[float] = 10.0
HEART_LEFT_OF_MIDLINE_CM: Final[float] = 2.0
HEART_BEHIND_SKIN_CM: Final[float] = 7.0
# Subcutaneous fat moves the skin (and the electrodes) away from the heart as BMI rises, so QRS
# voltage falls with BMI at a given LV mass (Kurisu S et al., Int J Cardiol Metab Endocr 2015,
# doi:10.1016/j.ijcme.2015.10.006: R in V4-V5 lower in the obese although LV mass is higher,
# Sokolow-Lyon per gram of LV mass falls with BMI; Hassing GJ et al., Neth Heart J 2019
# (issue 10): Sokolow-Lyon falls with BMI even within the normal BMI range). 0.2 cm of soft
# tissue per kg/m^2 is our estimate.
FAT_CM_PER_BMI_UNIT: Final[float] = 0.20
FAT_MIN_CM: Final[float] = -1.0   # lean chests are thinner than the reference, not negative
# Breast tissue over V3-V6 in women attenuates precordial voltages (one reason women's voltage
# criteria thresholds are lower, e.g. Cornell 2.0 vs 2.8 mV: Casale PN et al., J Am Coll
# Cardiol 1985;6:572). Extra soft tissue depth, uniform in this range (our estimate).
BREAST_EXTRA_CM: Final[tuple[float, float]] = (0.5, 2.5)
BREAST_WEIGHT: Final[Mapping[str, float]] = {"V3": 0.5, "V4": 1.0, "V5": 1.0, "V6": 0.6}

# Precordial electrode positions (AHA: Kligfield P et al., Circulation 2007;115:1306):
# V1/V2 4th intercostal space at the right/left sternal border (~2.5 cm from the midline),
# V4 5th space midclavicular line (~9 cm), V3 midway between V2 and V4, V5 anterior and V6
# mid-axillary line at V4's level. Lateral offsets (cm from the midline; "angle" for V5/V6 in
# degrees around the thorax from the anterior midline) and heights (cm above the heart's
# centre) are our estimates for a reference chest.
V_LATERAL_CM: Final[Mapping[str, float]] = {"V1": -2.5, "V2": 2.5, "V4": 9.0}
V_ANGLE_DEG: Final[Mapping[str, float]] = {"V5": 62.0, "V6": 90.0}
V_HEIGHT_CM: Final[Mapping[str, float]] = {"V1": -0.5, "V2": -0.5, "V4": -3.5, "V5": -3.5,
                                          "V6": -3.5}
# Precordial electrodes are often misplaced by 1-2 cm, V1/V2 mostly vertically (e.g. placed
# in the 2nd or 3rd space: Kligfield 2007 above; our SDs).
V_JITTER_SD_CM: Final[float] = 1.0
V_SET_HEIGHT_SD_CM: Final[float] = 1.0
# Limb electrodes: the limbs act as leads from the points where they join the torso, so the
# electrodes sit at effective positions in the frontal plane: directions -150 (RA), -30 (LA),
# +90 (LL) degrees in the hexaxial convention (clockwise from the patient's left, positive
# inferior; Einthoven's triangle), tilted slightly posterior, with the foot electrode closer
# (the inferior gain of lead II exceeds the leftward gain of lead I, as in Burger's triangle
# and Dower's matrix above). The radius sets limb-lead gain against the precordial leads.
LIMB_ANGLES_DEG: Final[Mapping[str, float]] = {"RA": -150.0, "LA": -30.0, "LL": 90.0}
LIMB_RADIUS_CM: Final[float] = 17.0
LL_RADIUS_FACTOR: Final[float] = 0.6
LIMB_POSTERIOR_TILT: Final[float] = 0.1
LIMB_ANGLE_JITTER_SD_DEG: Final[float] = 4.0
LIMB_FAT_FACTOR: Final[float] = 0.5  # fat moves the limb-lead "electrodes" less (cm per cm)

# ============================================================================================
# Heart vector: orientation and amplitudes
# ============================================================================================
# The lobe directions below are defined for a reference anatomy: LV long axis 45 deg anterior
# of the patient's left and 45 deg below the horizontal (the mean of the state's
# heart_azimuth_deg/heart_elevation_deg). The whole loop turns with the subject's long axis.
REF_AZIMUTH_DEG: Final[float] = 45.0
REF_ELEVATION_DEG: Final[float] = 45.0
# Variation of the electrical axis unrelated to anatomy (conduction system, fibre orientation):
# frontal SD 10 deg on top of the anatomical spread keeps the frontal QRS axis of normals mostly
# within -30..+90 deg (normal limits: Rijnbeek PR et al., J Electrocardiol 2014;47:914,
# normalecg.org; left axis deviation beyond -30 deg: Surawicz B et al., AHA/ACCF/HRS
# recommendations part III, Circulation 2009;119:e235).
AXIS_FRONTAL_SD_DEG: Final[float] = 10.0
AXIS_HORIZONTAL_SD_DEG: Final[float] = 10.0
T_EXTRA_AXIS_SD_DEG: Final[float] = 10.0
# Left ventricular hypertrophy shifts the QRS axis left and posterior (deeper S in V1-V2).
LVH_LEFT_SHIFT_DEG_PER_DOUBLING: Final[float] = 12.0
LVH_POSTERIOR_SHIFT_DEG_PER_DOUBLING: Final[float] = 8.0
DIRECTION_JITTER_SD: Final[float] = 0.12  # per-lobe direction scatter (~7 deg)
WEIGHT_JITTER_LOG_SD: Final[float] = 0.15  # per-lobe amplitude scatter

# QRS dipole: amplitude ~ LV mass^0.7 x LVEDV^0.25 (larger muscle mass, larger dipole; a larger
# blood-filled cavity adds a little, the Brody effect), scattered log-normally between people.
# LV mass explains only part of QRS voltage in life (r ~0.3-0.5 between Sokolow-Lyon and
# CMR LV mass, e.g. Hancock EW et al., AHA/ACCF/HRS recommendations part V, Circulation
# 2009;119:e251, "low sensitivity" of voltage criteria); exponents and scatter are our choice.
QRS_DIPOLE_MA_CM: Final[float] = 5.3        # main (LV free wall) lobe at the reference mass
REF_LVM_G: Final[float] = 100.0
REF_LVEDV_ML: Final[float] = 150.0
LVM_EXPONENT: Final[float] = 0.6
LVEDV_EXPONENT: Final[float] = 0.25
QRS_AMPLITUDE_LOG_SD: Final[float] = 0.22
CONDUCTION_AMPLITUDE_FACTOR: Final[float] = 1.15  # LBBB QRS complexes are large
# T and P amplitudes (mA cm), see the calibration notes in _lobes().
T_DIPOLE_MA_CM: Final[float] = 1.7
T_AMPLITUDE_LOG_SD: Final[float] = 0.25
T_MASS_EXPONENT: Final[float] = 0.35
P_DIPOLE_MA_CM: Final[float] = 0.6
P_AMPLITUDE_LOG_SD: Final[float] = 0.2
# P-wave duration ~100 +- 10 ms (normal < 120 ms: Surawicz 2009 above); it ends >= 40 ms before
# the QRS so the PR segment stays isoelectric.
P_DURATION_MS: Final[tuple[float, float]] = (100.0, 10.0)
P_MIN_GAP_TO_QRS_MS: Final[float] = 40.0
# T-wave shape over [J point, T end]: u^a (1-u)^b, peak at a/(a+b) ~ 0.68 of the J-Tend span
# (T peak to T end ~ 90-110 ms at normal QT).
T_SHAPE_A: Final[float] = 3.2
T_SHAPE_B: Final[float] = 1.5
T_SHAPE_A_LBBB: Final[float] = 2.4  # discordant ST-T starts at the J point in LBBB
T_SHAPE_B_LBBB: Final[float] = 1.2

# LV strain (repolarisation abnormality of hypertrophy, low EF): the T vector turns from
# concordant towards opposite the QRS. Strain score from relative mass and EF (our model).
STRAIN_PER_LOG_MASS: Final[float] = 1.3     # per log(LVM / sex reference) above log(1.3)
STRAIN_MASS_THRESHOLD: Final[float] = math.log(1.3)
STRAIN_PER_EF_BELOW_45: Final[float] = 3.0  # per unit of EF (fraction) below 0.45
STRAIN_SD: Final[float] = 0.15
SEX_REF_LVM_G: Final[Mapping[int, float]] = {0: 70.0, 1: 104.0}  # physiology reference means

# ============================================================================================
# Rhythm
# ============================================================================================
# Respiratory sinus arrhythmia: breathing 12-20 /min modulates RR by a few percent, less in
# older people (a well-known decline of vagal heart-rate variability with age; the amplitude
# model is ours).
RESP_RATE_PER_MIN: Final[tuple[float, float]] = (12.0, 20.0)
RSA_FRACTION_AT_50Y: Final[float] = 0.045
RSA_FRACTION_PER_YEAR: Final[float] = -0.0008
RSA_MIN_FRACTION: Final[float] = 0.005
RR_JITTER_SD: Final[float] = 0.012
# Breathing also modulates QRS amplitude (heart and electrode geometry change).
RESP_AMPLITUDE_MODULATION: Final[tuple[float, float]] = (0.02, 0.07)
# Atrial fibrillation: irregularly irregular RR (coefficient of variation ~0.15-0.30 in
# rate-controlled AF, e.g. Tateno K, Glass L, Med Biol Eng Comput 2001;39:664), no P waves,
# fibrillatory waves at 4-9 Hz (350-550 /min) of 0.05-0.2 mV, largest in V1.
AF_RR_LOG_SD: Final[tuple[float, float]] = (0.15, 0.28)
AF_MIN_RR_S: Final[float] = 0.30
AF_MIN_RR_PER_QT: Final[float] = 0.9
AF_F_WAVE_HZ: Final[tuple[float, float]] = (5.0, 8.0)
AF_F_DIPOLE_MA_CM: Final[tuple[float, float]] = (0.06, 0.18)

# ============================================================================================
# Noise (per electrode, mV)
# ============================================================================================
MAINS_HZ: Final[float] = 50.0  # UK Biobank: UK mains
# Median amplitudes with log-normal spread between subjects (our estimates of a resting ECG in
# a clinic: baseline wander tens of uV to ~0.2 mV, mains and EMG of the order of 10 uV).
BASELINE_WANDER_MV: Final[float] = 0.05
MAINS_MV: Final[float] = 0.01
EMG_MV: Final[float] = 0.006
NOISE_LOG_SD: Final[float] = 0.6
EMG_BAND_HZ: Final[tuple[float, float]] = (20.0, 150.0)
LIMB_EMG_FACTOR: Final[float] = 1.5  # limb muscles are the usual source of tremor artefact


# ============================================================================================
# Public API
# ============================================================================================
def simulate_ecg(state: Mapping[str, object], rng: np.random.Generator, fs: int = 500,
                 duration_s: float = 10.0, *,
                 systolic_coupling: float = DEFAULT_SYSTOLIC_COUPLING) -> np.ndarray:
    """A resting 12-lead ECG of one subject.

    Args:
        state: the subject's latent state (keys of the state schema, see
            ``ecgcmr.synth.physiology.STATE_KEYS``); uses sex, age, height, BMI, archetype,
            LVEDV, LVEF, LV mass, heart rate, PR, QRS, QT, heart orientation and AF.
        rng: the subject's ECG random stream (the only source of randomness).
        fs: sampling rate (Hz).
        duration_s: strip length (s).
        systolic_coupling: scales the LV strain term of low EF (see
            ``ecgcmr.constants.DEFAULT_SYSTOLIC_COUPLING``); the draws are the same at
            any setting.

    Returns:
        ``(12, round(fs * duration_s))`` float64 in mV, leads in ``ecgcmr.constants.LEADS``
        order, with Einthoven's and Goldberger's relations exact.
    """
    _check_inputs(state, fs, duration_s)
    n = int(round(fs * duration_s))
    t = np.arange(n) / fs
    resp_hz = rng.uniform(*RESP_RATE_PER_MIN) / 60.0
    resp_phase = rng.uniform(0.0, 2.0 * math.pi)
    in_af = bool(state["in_af"])
    beats = beat_times(state, rng, duration_s, resp_hz, resp_phase)
    template, offset = _beat_template(state, rng, fs, not in_af, systolic_coupling)  # (3S, L)
    modulation = 1.0 + rng.uniform(*RESP_AMPLITUDE_MODULATION) * np.sin(
        2.0 * math.pi * resp_hz * beats + resp_phase)
    dipoles = _place_beats(template, offset, beats, modulation, fs, n)       # (3 S, T) mA cm
    if in_af:
        s = 3 * SITES.index("atria")
        dipoles[s:s + 3] += _fibrillatory_waves(rng, t)
    lead_field = _lead_field(state, rng)                                     # (9, 3 S)
    potentials = lead_field @ dipoles                                        # (9, T) mV
    potentials += _electrode_noise(rng, t, fs, resp_hz, resp_phase)
    return electrodes_to_leads(potentials)


#: State keys the simulator reads.
USED_KEYS: Final[tuple[str, ...]] = (
    "sex", "age_years", "height_cm", "bmi", "archetype", "lvedv_ml", "lvef", "lvm_g",
    "heart_rate_bpm", "pr_ms", "qrs_ms", "qt_ms", "heart_azimuth_deg", "heart_elevation_deg",
    "in_af",
)


def _check_inputs(state: Mapping[str, object], fs: float, duration_s: float) -> None:
    subject = str(state.get("subject_id", "?"))
    missing = [k for k in USED_KEYS if k not in state]
    if missing:
        raise DataError("latent state lacks keys the ECG simulator needs", subject=subject,
                        expected=", ".join(USED_KEYS), found=f"missing {missing}")
    if not (fs > 0 and duration_s > 0):
        raise DataError("sampling rate and duration must be positive", subject=subject,
                        expected="fs > 0 Hz, duration_s > 0 s",
                        found=f"fs={fs}, duration_s={duration_s}")
    rate = float(state["heart_rate_bpm"])
    if not (math.isfinite(rate) and rate > 0):
        raise DataError("heart rate must be a positive number", subject=subject,
                        expected="heart_rate_bpm > 0", found=str(rate))


def electrodes_to_leads(potentials: np.ndarray) -> np.ndarray:
    """Leads from electrode potentials, as an electrocardiograph forms them.

    Args:
        potentials: ``(9, T)`` mV, electrodes in :data:`ELECTRODES` order (RA, LA, LL, V1-V6).

    Returns:
        ``(12, T)`` mV in ``LEADS`` order: I, II, III (Einthoven), aVR, aVL, aVF (Goldberger),
        V1-V6 against Wilson's central terminal.
    """
    return LEAD_MATRIX @ potentials


def beat_times(state: Mapping[str, object], rng: np.random.Generator, duration_s: float,
               resp_hz: float, resp_phase: float) -> np.ndarray:
    """QRS onset times (s) covering the strip and a little either side.

    Sinus rhythm: RR modulated by breathing (respiratory sinus arrhythmia) plus small jitter.
    AF: independent log-normal RR intervals. Either way, the RR intervals inside the strip are
    rescaled to average exactly 60 / ``heart_rate_bpm``: the state's rate is this strip's rate.
    """
    rr0 = 60.0 / float(state["heart_rate_bpm"])
    n_rr = int(math.ceil((duration_s + 4.0 * rr0) / (0.6 * rr0))) + 2
    if bool(state["in_af"]):
        raw = np.exp(rng.uniform(*AF_RR_LOG_SD) * rng.standard_normal(n_rr))
        # no beat inside the ventricles' refractory period (~ the QT)
        floor = max(AF_MIN_RR_S, AF_MIN_RR_PER_QT * float(state["qt_ms"]) / 1000.0)
        rr = np.maximum(rr0 * raw / raw.mean(), floor)
    else:
        age = float(state["age_years"])
        rsa = max(RSA_FRACTION_AT_50Y + RSA_FRACTION_PER_YEAR * (age - 50.0), RSA_MIN_FRACTION)
        jitter = RR_JITTER_SD * rng.standard_normal(n_rr)
        rr = np.empty(n_rr)
        clock = 0.0
        for k in range(n_rr):  # breathing phase at each beat sets the next interval
            rr[k] = rr0 * (1.0 + rsa * math.sin(2.0 * math.pi * resp_hz * clock + resp_phase)
                           + jitter[k])
            clock += rr[k]
    start = -2.0 * rr0 - rng.uniform(0.0, rr0)
    for _ in range(4):  # rescale so the intervals within the strip average rr0
        onsets = start + np.concatenate([[0.0], np.cumsum(rr)])
        inside = (onsets[:-1] >= 0.0) & (onsets[1:] < duration_s)
        if inside.sum() == 0:
            break
        rr = rr * (rr0 / rr[inside].mean())
    onsets = start + np.concatenate([[0.0], np.cumsum(rr)])
    return onsets[onsets < duration_s + rr0]


# ============================================================================================
# Heart vector
# ============================================================================================
@dataclass(frozen=True)
class Lobe:
    """One oriented component of the heart vector: a bump in time with a fixed direction.

    ``start_s``/``end_s`` relative to QRS onset (s); ``direction`` a unit 3-vector (x left,
    y anterior, z superior); ``amplitude`` its peak dipole (mA cm); ``site`` where the dipole
    sits (a key of :data:`SOURCE_SITES_CM`); ``shape`` "hann" (raised cosine) or "t"
    (asymmetric T-wave bump, exponents ``a``, ``b``).
    """

    start_s: float
    end_s: float
    direction: tuple[float, float, float]
    amplitude: float
    site: str = "ventricles"
    shape: str = "hann"
    a: float = T_SHAPE_A
    b: float = T_SHAPE_B

    def evaluate(self, tau: np.ndarray) -> np.ndarray:
        """(3, len(tau)) dipole of this lobe at times ``tau`` (s from QRS onset)."""
        u = (tau - self.start_s) / (self.end_s - self.start_s)
        inside = (u > 0.0) & (u < 1.0)
        w = np.zeros_like(tau)
        ui = u[inside]
        if self.shape == "hann":
            w[inside] = np.sin(math.pi * ui) ** 2
        else:
            peak = self.a / (self.a + self.b)
            w[inside] = (ui**self.a * (1.0 - ui) ** self.b) / (peak**self.a
                                                              * (1.0 - peak) ** self.b)
        return self.amplitude * np.asarray(self.direction)[:, None] * w[None, :]


def _unit(v: np.ndarray | tuple[float, ...]) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def long_axis(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit LV long axis (base to apex): azimuth from the left towards anterior, elevation down."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), -math.sin(el)])


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(3, 3) smallest rotation taking unit vector ``a`` to unit vector ``b`` (Rodrigues)."""
    v = np.cross(a, b)
    c = float(a @ b)
    s2 = float(v @ v)
    if s2 < 1e-18:
        return np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx * ((1.0 - c) / s2)


def anatomical_rotation(state: Mapping[str, object]) -> np.ndarray:
    """(3, 3) rotation taking the reference long axis to this subject's LV long axis."""
    return _rotation_between(long_axis(REF_AZIMUTH_DEG, REF_ELEVATION_DEG),
                             long_axis(float(state["heart_azimuth_deg"]),
                                       float(state["heart_elevation_deg"])))


def _frontal_rotation(deg: float) -> np.ndarray:
    """(3, 3) turning vectors by ``-deg`` in the hexaxial frontal angle (positive = leftward)."""
    d = math.radians(deg)
    return np.array([[math.cos(d), 0.0, -math.sin(d)],
                     [0.0, 1.0, 0.0],
                     [math.sin(d), 0.0, math.cos(d)]])


def _horizontal_rotation(deg: float) -> np.ndarray:
    """(3, 3) turning vectors by ``deg`` from anterior towards posterior about the vertical."""
    d = math.radians(deg)
    return np.array([[math.cos(d), math.sin(d), 0.0],
                     [-math.sin(d), math.cos(d), 0.0],
                     [0.0, 0.0, 1.0]])


# Reference-orientation lobe directions (x left, y anterior, z superior) and timing as fractions
# of QRS duration. Normal activation (Durrer D et al., Circulation 1970;41:899): septum left to
# right (rightward-anterior: q in I/aVL/V5-V6, r in V1), antero-apical (R growing across
# V2-V4), LV free wall (leftward-posterior-inferior: tall R in I/II/V5-V6, S in V1-V2), basal
# terminal forces (posterior-superior: small s). LBBB-like (conduction): septum activated from
# the right (leftward, no septal q), then a slow, two-humped leftward-posterior sweep (broad
# notched R in I/aVL/V5-V6, deep S/QS in V1).
_NORMAL_QRS: Final = (
    # (start frac, end frac, direction, relative amplitude, site)
    (0.00, 0.32, (-0.55, 0.72, -0.30), 0.17, "septum"),
    (0.10, 0.60, (0.40, 0.45, -0.78), 0.45, "apex"),
    (0.26, 0.84, (0.82, -0.30, -0.48), 1.00, "lv_wall"),
    (0.58, 1.00, (-0.30, -0.60, 0.74), 0.20, "base"),
)
_LBBB_QRS: Final = (
    (0.00, 0.28, (0.70, -0.15, -0.35), 0.22, "septum"),
    (0.08, 0.56, (0.76, -0.50, -0.30), 0.80, "apex"),
    (0.44, 0.98, (0.78, -0.58, 0.05), 0.85, "lv_wall"),
)
# T roughly concordant with the mean QRS, more anterior (upright in I, II, V2-V6; T axis
# ~+40..+60 deg); P: right atrium (anterior-inferior) then left atrium (leftward-posterior);
# P axis ~+50..+60 deg (normal 0..+75: Surawicz 2009 above).
_T_DIRECTION: Final = (0.55, 0.55, -0.62)
_P_LOBES: Final = (
    (0.00, 0.62, (0.20, 0.45, -0.87), 1.00, "ra"),
    (0.35, 1.00, (0.82, -0.42, -0.40), 0.85, "la"),
)
# Fibrillatory waves: largest in V1 and the inferior leads (right-anterior-inferior).
_F_DIRECTION: Final = (-0.25, 0.80, -0.55)


def _scatter_direction(rng: np.random.Generator, d: tuple[float, ...]) -> np.ndarray:
    return _unit(_unit(d) + DIRECTION_JITTER_SD * rng.standard_normal(3))


def _strain(state: Mapping[str, object], rng: np.random.Generator,
            systolic_coupling: float) -> float:
    """LV strain score in [0, 1]: 0 = normal T, 1 = T opposite to the QRS."""
    rel_mass = math.log(float(state["lvm_g"]) / SEX_REF_LVM_G[int(state["sex"])])
    score = (STRAIN_PER_LOG_MASS * max(0.0, rel_mass - STRAIN_MASS_THRESHOLD)
             + systolic_coupling * STRAIN_PER_EF_BELOW_45 * max(0.0, 0.45 - float(state["lvef"]))
             + STRAIN_SD * rng.standard_normal())
    return float(np.clip(score, 0.0, 1.0))


def _lobes(state: Mapping[str, object], rng: np.random.Generator, with_p: bool,
           systolic_coupling: float) -> list[Lobe]:
    """All lobes of one beat (QRS onset at 0 s), in the subject's orientation.

    Calibration (amplitudes tuned so that a cohort drawn from ``sample_state`` measures, in
    normals, within the clinical norms): lead II R ~0.5-1.5 mV; Sokolow-Lyon (S V1 + max R
    V5/V6) mostly 1.5-3.5 mV with > 3.5 mV the classic LVH threshold (Sokolow M, Lyon TP, Am
    Heart J 1949;37:161); transition (R = S) around V3-V4; P in II 0.1-0.25 mV (< 0.25 mV
    normal, Surawicz 2009); T 0.1-0.5 mV in the lateral leads.
    """
    qrs_s = float(state["qrs_ms"]) / 1000.0
    qt_s = float(state["qt_ms"]) / 1000.0
    pr_s = float(state["pr_ms"]) / 1000.0
    conduction = state["archetype"] == "conduction"
    lvm, lvedv = float(state["lvm_g"]), float(state["lvedv_ml"])

    # orientation: anatomy, anatomy-unrelated scatter, LVH shift
    rot = anatomical_rotation(state)
    doublings = max(0.0, math.log2(lvm / SEX_REF_LVM_G[int(state["sex"])]))
    qrs_rot = (rot
               @ _frontal_rotation(AXIS_FRONTAL_SD_DEG * rng.standard_normal()
                                   + LVH_LEFT_SHIFT_DEG_PER_DOUBLING * doublings)
               @ _horizontal_rotation(AXIS_HORIZONTAL_SD_DEG * rng.standard_normal()
                                      + LVH_POSTERIOR_SHIFT_DEG_PER_DOUBLING * doublings))

    amp = (QRS_DIPOLE_MA_CM * (lvm / REF_LVM_G) ** LVM_EXPONENT
           * (lvedv / REF_LVEDV_ML) ** LVEDV_EXPONENT
           * math.exp(QRS_AMPLITUDE_LOG_SD * rng.standard_normal()))
    if conduction:
        amp *= CONDUCTION_AMPLITUDE_FACTOR
    lobes = []
    mean_qrs = np.zeros(3)
    for f0, f1, d, w, site in (_LBBB_QRS if conduction else _NORMAL_QRS):
        direction = qrs_rot @ _scatter_direction(rng, d)
        a = amp * w * math.exp(WEIGHT_JITTER_LOG_SD * rng.standard_normal())
        lobes.append(Lobe(f0 * qrs_s, f1 * qrs_s, tuple(direction), a, site))
        mean_qrs += a * (f1 - f0) * direction

    # T: concordant (normal), discordant (LBBB), turned away by strain
    t_amp = (T_DIPOLE_MA_CM * (lvm / REF_LVM_G) ** T_MASS_EXPONENT
             * math.exp(T_AMPLITUDE_LOG_SD * rng.standard_normal()))
    t_rot = qrs_rot @ _frontal_rotation(T_EXTRA_AXIS_SD_DEG * rng.standard_normal())
    normal_t = t_rot @ _scatter_direction(rng, _T_DIRECTION)
    strain = _strain(state, rng, systolic_coupling)
    if conduction:
        t_dir, a_shape, b_shape = -_unit(mean_qrs), T_SHAPE_A_LBBB, T_SHAPE_B_LBBB
        strain = 1.0
    else:
        # interpolate between concordant and opposite-to-QRS; passing near zero = flat T
        t_dir = (1.0 - strain) * normal_t - strain * _unit(mean_qrs)
        a_shape, b_shape = T_SHAPE_A, T_SHAPE_B
    t_dir = t_dir + 0.05 * normal_t  # never exactly zero
    t_amp *= max(float(np.linalg.norm(t_dir)), 0.15) * (1.0 + 0.3 * strain)
    lobes.append(Lobe(qrs_s, qt_s, tuple(_unit(t_dir)), t_amp, "ventricles", shape="t",
                      a=a_shape, b=b_shape))

    if with_p:
        p_dur = rng.normal(*P_DURATION_MS) / 1000.0
        p_dur = min(max(p_dur, 0.06), pr_s - P_MIN_GAP_TO_QRS_MS / 1000.0)
        p_amp = P_DIPOLE_MA_CM * math.exp(P_AMPLITUDE_LOG_SD * rng.standard_normal())
        for f0, f1, d, w, site in _P_LOBES:
            direction = rot @ _scatter_direction(rng, d)
            lobes.append(Lobe(-pr_s + f0 * p_dur, -pr_s + f1 * p_dur, tuple(direction),
                              p_amp * w, site))
    return lobes


def _beat_template(state: Mapping[str, object], rng: np.random.Generator, fs: int,
                   with_p: bool, systolic_coupling: float) -> tuple[np.ndarray, int]:
    """((3 S, L) dipoles of one beat at the S sites of ``SITES``, mA cm; QRS onset index).

    Rows ``3 s .. 3 s + 2`` hold the (x, y, z) dipole at site ``SITES[s]``.
    """
    lobes = _lobes(state, rng, with_p, systolic_coupling)
    start = min(lobe.start_s for lobe in lobes)
    end = max(lobe.end_s for lobe in lobes)
    i0 = int(math.floor(start * fs)) - 1
    i1 = int(math.ceil(end * fs)) + 2
    tau = np.arange(i0, i1) / fs
    template = np.zeros((3 * len(SITES), tau.size))
    for lobe in lobes:
        s = 3 * SITES.index(lobe.site)
        template[s:s + 3] += lobe.evaluate(tau)
    return template, -i0


def _place_beats(template: np.ndarray, offset: int, onsets_s: np.ndarray,
                 scale: np.ndarray, fs: int, n: int) -> np.ndarray:
    """(rows, n) dipoles: the beat template added at each QRS onset, scaled per beat."""
    out = np.zeros((template.shape[0], n))
    length = template.shape[1]
    for onset, k in zip(onsets_s, scale, strict=True):
        i = int(round(onset * fs)) - offset
        a, b = max(i, 0), min(i + length, n)
        if b > a:
            out[:, a:b] += k * template[:, a - i:b - i]
    return out


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, max_hz: float, n_terms: int = 4
                  ) -> np.ndarray:
    """Zero-mean, unit-ish-variance slow random signal: a few random low-frequency sinusoids."""
    freqs = rng.uniform(0.05, max_hz, n_terms)
    phases = rng.uniform(0.0, 2.0 * math.pi, n_terms)
    return np.sqrt(2.0 / n_terms) * np.sin(2.0 * math.pi * freqs[:, None] * t[None, :]
                                           + phases[:, None]).sum(axis=0)


def _fibrillatory_waves(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """(3, T) atrial fibrillatory activity: a wandering 5-8 Hz oscillation, mA cm."""
    fs = 1.0 / (t[1] - t[0])
    out = np.zeros((3, t.size))
    for weight in (1.0, 0.5):  # two wavefronts with their own rate and direction
        f0 = rng.uniform(*AF_F_WAVE_HZ)
        inst_hz = f0 * (1.0 + 0.12 * _smooth_noise(rng, t, 0.5))
        phase = 2.0 * math.pi * np.cumsum(inst_hz) / fs + rng.uniform(0.0, 2.0 * math.pi)
        wave = np.sin(phase) + 0.3 * np.sin(2.0 * phase + rng.uniform(0.0, 2.0 * math.pi))
        envelope = np.clip(1.0 + 0.35 * _smooth_noise(rng, t, 0.8), 0.2, None)
        amp = weight * rng.uniform(*AF_F_DIPOLE_MA_CM)
        direction = _unit(_unit(_F_DIRECTION) + 0.3 * rng.standard_normal(3))
        out += amp * direction[:, None] * (envelope * wave)[None, :]
    return out


# ============================================================================================
# Volume conductor and electrodes
# ============================================================================================
def _fat_cm(state: Mapping[str, object]) -> float:
    return max(FAT_CM_PER_BMI_UNIT * (float(state["bmi"]) - REF_BMI), FAT_MIN_CM)


def electrode_positions(state: Mapping[str, object], rng: np.random.Generator) -> np.ndarray:
    """(9, 3) electrode positions (cm, heart-centred, ``ELECTRODES`` order) for this record."""
    size = float(state["height_cm"]) / REF_HEIGHT_CM
    fat = _fat_cm(state)
    # thorax ellipse (centre cx, cy) in the horizontal plane; the skin lies `fat` outside it
    a, b = THORAX_HALF_WIDTH_CM * size, THORAX_HALF_DEPTH_CM * size
    cx = -HEART_LEFT_OF_MIDLINE_CM * size
    cy = (HEART_BEHIND_SKIN_CM - THORAX_HALF_DEPTH_CM) * size
    breast = rng.uniform(*BREAST_EXTRA_CM) if int(state["sex"]) == 0 else 0.0
    set_dz = V_SET_HEIGHT_SD_CM * rng.standard_normal()

    def on_skin(angle: float, depth: float) -> np.ndarray:
        # point of the thorax ellipse at `angle` (from the anterior midline, towards the left),
        # pushed out along the outward normal by `depth`
        p = np.array([cx + a * math.sin(angle), cy + b * math.cos(angle)])
        normal = _unit(np.array([math.sin(angle) / a, math.cos(angle) / b]))
        return p + depth * normal

    angles = {name: math.asin(lat * size / a) for name, lat in V_LATERAL_CM.items()}
    angles.update({name: math.radians(deg) for name, deg in V_ANGLE_DEG.items()})
    angles["V3"] = 0.5 * (angles["V2"] + angles["V4"])
    heights = dict(V_HEIGHT_CM)
    heights["V3"] = 0.5 * (heights["V2"] + heights["V4"])
    positions = []
    for name in ("RA", "LA", "LL"):
        alpha = math.radians(LIMB_ANGLES_DEG[name] + LIMB_ANGLE_JITTER_SD_DEG
                             * rng.standard_normal())
        radius = LIMB_RADIUS_CM * size + LIMB_FAT_FACTOR * fat
        radius *= LL_RADIUS_FACTOR if name == "LL" else 1.0
        positions.append(radius * _unit((math.cos(alpha), -LIMB_POSTERIOR_TILT,
                                         -math.sin(alpha))))
    for name in ("V1", "V2", "V3", "V4", "V5", "V6"):
        angle = angles[name] + V_JITTER_SD_CM * rng.standard_normal() / a
        depth = fat + breast * BREAST_WEIGHT.get(name, 0.0)
        xy = on_skin(angle, depth)
        z = heights[name] * size + set_dz + V_JITTER_SD_CM * rng.standard_normal()
        positions.append(np.array([xy[0], xy[1], z]))
    return np.stack(positions)


def source_positions(state: Mapping[str, object]) -> np.ndarray:
    """(S, 3) positions (cm, heart-centred) of the dipole sites ``SITES`` in this subject."""
    rot = anatomical_rotation(state)
    scale = (float(state["lvedv_ml"]) / REF_LVEDV_ML) ** (1.0 / 3.0)
    sites = np.array([SOURCE_SITES_CM[name] for name in SITES])
    ventricular = np.array([name not in _ATRIAL_SITES for name in SITES])
    sites[ventricular] *= scale
    return sites @ rot.T


def _lead_field(state: Mapping[str, object], rng: np.random.Generator) -> np.ndarray:
    """(9, 3 S) lead field: phi_e = sum_s L[e, 3s:3s+3] . p_s (mV per mA cm).

    A (softened) dipole in a homogeneous volume conductor: phi = K p.r / (|r|^2 + rho^2)^1.5,
    r from the dipole's site to the electrode.
    """
    electrodes = electrode_positions(state, rng)                       # (9, 3)
    r = electrodes[:, None, :] - source_positions(state)[None, :, :]   # (9, S, 3)
    dist2 = (r**2).sum(axis=2, keepdims=True) + SOURCE_RADIUS_CM**2
    return (K_MV_CM2_PER_MA_CM * r / dist2**1.5).reshape(len(ELECTRODES), -1)


def _electrode_noise(rng: np.random.Generator, t: np.ndarray, fs: float, resp_hz: float,
                     resp_phase: float) -> np.ndarray:
    """(9, T) noise at each electrode (mV): baseline wander, mains, EMG; levels per subject."""
    n_el, n = len(ELECTRODES), t.size

    def level(median: float) -> float:
        return median * math.exp(NOISE_LOG_SD * rng.standard_normal())

    # baseline wander: breathing (electrode-specific amplitude/phase) + slow drift
    wander_amp, mains_amp, emg_amp = (level(BASELINE_WANDER_MV), level(MAINS_MV),
                                      level(EMG_MV))
    out = np.empty((n_el, n))
    for e in range(n_el):
        breathing = rng.uniform(0.0, 1.0) * np.sin(2.0 * math.pi * resp_hz * t + resp_phase
                                                   + rng.normal(0.0, 0.5))
        out[e] = wander_amp * (breathing + 0.7 * _smooth_noise(rng, t, 0.4, 3))
    # mains: common phase, electrode-specific coupling (the common mode cancels in the leads)
    coupling = rng.uniform(0.3, 1.7, n_el)
    phase = rng.uniform(0.0, 2.0 * math.pi) + rng.normal(0.0, 0.2, n_el)
    out += mains_amp * coupling[:, None] * np.sin(2.0 * math.pi * MAINS_HZ * t[None, :]
                                                  + phase[:, None])
    # EMG: band-limited Gaussian noise, stronger on the limb electrodes
    spectrum = np.fft.rfft(rng.standard_normal((n_el, n)), axis=1)
    freqs = np.fft.rfftfreq(n, 1.0 / fs)
    band = (freqs >= EMG_BAND_HZ[0]) & (freqs <= EMG_BAND_HZ[1])
    emg = np.fft.irfft(spectrum * band[None, :], n=n, axis=1)
    emg /= emg.std(axis=1, keepdims=True) + 1e-12
    gain = np.where(np.arange(n_el) < 3, LIMB_EMG_FACTOR, 1.0)
    out += emg_amp * gain[:, None] * emg
    return out
