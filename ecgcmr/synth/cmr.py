"""Synthetic short-axis (SAX) cine CMR at end-diastole (ED) and end-systole (ES).

:func:`render_cmr` turns one subject's latent state (target LVEDV, LVEF, LV mass, RVEDV, RVEF,
body size, direction of the LV long axis) into a balanced-SSFP-like 3D SAX stack at ED and ES,
label maps and a NIfTI affine; the phenotypes are then measured from the label maps by disc
summation (:func:`ecgcmr.data.phenotypes.measure_phenotypes`, the same for any user's maps).

Geometry model
--------------
Heart frame (mm): ``h3`` along the LV long axis, from the centre of the ED base (mitral) plane
towards the apex; ``h1`` perpendicular to it, from the LV axis towards the RV; ``h2 = h3 x h1``.

* **LV cavity**: a prolate ellipsoid cut by the base plane 0.35 of its long semi-axis above
  its equator (a truncated prolate ellipsoid, slightly elliptic in cross-section); its size is
  solved in closed form so the volume is exactly the target.
* **LV myocardium**: the shell between the cavity and an outer ellipsoid whose short
  semi-axes are larger by the wall thickness ``t`` (the long one by ``0.8 t``: a thinner
  apex), cut by the same base plane; ``t`` is solved so the shell holds ``lvm_g / 1.05`` mL.
  (For UK Biobank-like targets this gives ED walls of ~5.7 mm in women and ~6.8 mm in men,
  near the 5.3 / 6.3 mm mid-cavity means of Kawel N et al., Circ Cardiovasc Imaging
  2012;5:500 - a check, not an input.)
* **ES**: the apex stays put and the base plane descends towards it by the atrioventricular-
  plane displacement that supplies ~60 % of the stroke volume (~16 mm in a normal heart, less
  in a failing one); the cavity narrows to ``lvedv * (1 - lvef)`` and the wall thickens so the
  myocardial volume is conserved.
* **RV**: a half-ellipsoid hanging from the base plane, grown about a point inside the septum
  so that, minus the LV epicardium, it is a crescent wrapping the septum on the right-anterior
  side; its in-plane size is solved numerically (fixed quadrature grid) to ``rvedv`` and
  ``rvedv * (1 - rvef)``; it shortens with the base at ES.
* Drawn in the image but not labelled as such: papillary muscles (inside the LV label, i.e.
  counted as blood pool, one of the conventions the SCMR post-processing recommendations
  allow), the RV free wall, epicardial fat, the atria above the base plane; and the chest:
  subcutaneous fat, chest-wall muscle, lungs, a two-domed diaphragm with liver and stomach
  beneath, spine, descending aorta and mediastinal fat, sized from BMI and height
  (:data:`TISSUES`, returned as ``tissue_ed/_es`` maps).

Acquisition model
-----------------
The stack is planned along the true LV long axis plus a small planning tilt; slices are
``slice_thickness_mm`` thick and ``slice_thickness_mm + slice_gap_mm`` apart, from just above
the ED base to the apex (typically 10-13 slices), with a random in-plane rotation and a shift
that keeps the ventricles in the field of view. The pose in world coordinates (NIfTI RAS+, mm)
follows the heart's anatomical orientation in the chest, so the stack is double oblique, plus
a random table offset: loaders must use the affine. Each image voxel averages
``supersample**2 x through_plane_samples`` sub-samples over its pixel and the slice thickness
(box slice profile) wherever a surface may cross it (decided with a conservative bound, so the
result equals full supersampling at a fraction of the cost); labels are taken at the voxel
centre on the slice's centre plane (nearest). Intensities are bSSFP-like (blood bright,
myocardium dark, lung very dark, fat bright) with per-subject contrast variation, a smooth
random texture, a smooth coil-like bias field, Rician noise (magnitude of complex Gaussian
noise) and a random scanner gain, stored as int16 like scanner output.

Limitations
-----------
Smooth analytic shapes only: no trabeculae, outflow tracts, valves, great vessels above the
base or atrial walls; the RV shares the LV base plane and has no infundibulum; one motion
state per phase (no breath-hold slice misregistration, no through-plane motion blur); the body
is an elliptic cylinder; intensities are relative values chosen to look like 1.5 T cine
bSSFP, not a Bloch simulation; noise is white. Measured phenotypes differ from the targets by a
few per cent (LVEDV sd ~3 %, RVESV sd ~6 %) because 10 mm slices sample the base and the
apex coarsely: realistic and intended, and downstream code uses only the measured numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

from ecgcmr.constants import (
    LABEL_BACKGROUND,
    LABEL_LV_BLOOD,
    LABEL_LV_MYO,
    LABEL_RV_BLOOD,
    MYOCARDIAL_DENSITY_G_PER_ML,
)
from ecgcmr.data.cmr import spacing_from_affine
from ecgcmr.data.phenotypes import MM3_PER_ML
from ecgcmr.errors import DataError

__all__ = [
    "TISSUES",
    "SaxSpec",
    "SyntheticCmr",
    "render_cmr",
]

# ============================================================================================
# Acquisition
# ============================================================================================


@dataclass(frozen=True)
class SaxSpec:
    """How the short-axis stack is acquired and rendered.

    The defaults follow the UK Biobank cine SAX protocol: bSSFP at 1.5 T, in-plane pixels
    1.8 x 1.8 mm, slices 8 mm thick with a 2 mm gap (Petersen SE et al., J Cardiovasc Magn
    Reson 2016;18:8, "UK Biobank's cardiovascular magnetic resonance protocol").
    """

    matrix: tuple[int, int] = (128, 128)  # in-plane voxels (X, Y); 128 x 1.8 mm = 230 mm FOV
    pixel_mm: float = 1.8                 # in-plane spacing (mm), both axes
    slice_thickness_mm: float = 8.0       # excited slab thickness (partial-volume width)
    slice_gap_mm: float = 2.0             # gap between slabs: slice spacing = thickness + gap
    n_slices: int | None = None           # None: enough to cover base to apex (+ margins)
    supersample: int = 2                  # in-plane sub-samples per axis (partial volume)
    through_plane_samples: int = 4        # sub-planes averaged across the slice thickness
    # (sub-samples are evaluated only where a surface may cross the voxel; 1 and 1: no PV)
    noise_sigma: float = 0.03             # Gaussian sd of each complex channel (blood = 1)
    noise_jitter: float = 0.3             # per-subject noise sd factor exp(U(-j, j))
    texture_strength: float = 0.05        # sd of the smooth multiplicative texture
    bias_field_strength: float = 0.25     # max |log amplitude| of the coil-like bias field
    contrast_jitter: float = 0.06         # per-subject sd of log tissue intensities
    max_inplane_rotation_deg: float = 30.0  # in-plane rotation U(-r, r) around the usual view
    max_inplane_shift_mm: float = 12.0    # heart offset from the FOV centre U(-s, s) per axis
    planning_tilt_sd_deg: float = 4.0     # stack normal vs true LV long axis (half-normal sd)
    max_table_offset_mm: float = 40.0     # random position of the heart in scanner space
    intensity_scale: float = 1000.0       # int16 value of an unshaded, noiseless blood voxel
    gain_jitter: float = 0.3              # per-subject scanner gain factor exp(U(-g, g))

    def __post_init__(self) -> None:
        if len(self.matrix) != 2 or min(self.matrix) < 16:
            raise ValueError(f"matrix must be two sizes >= 16, got {self.matrix}")
        for name in ("pixel_mm", "slice_thickness_mm", "intensity_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.slice_gap_mm < 0 or self.noise_sigma < 0:
            raise ValueError("slice_gap_mm and noise_sigma must be >= 0")
        if self.supersample < 1 or self.through_plane_samples < 1:
            raise ValueError("supersample and through_plane_samples must be >= 1")
        if self.n_slices is not None and self.n_slices < 1:
            raise ValueError(f"n_slices must be >= 1 or None, got {self.n_slices}")

    @property
    def slice_spacing_mm(self) -> float:
        """Centre-to-centre distance of neighbouring slices (mm)."""
        return self.slice_thickness_mm + self.slice_gap_mm

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel spacing (X, Y, Z) in mm, as the affine encodes it."""
        return (self.pixel_mm, self.pixel_mm, self.slice_spacing_mm)


@dataclass(frozen=True, eq=False)
class SyntheticCmr:
    """One subject's rendered SAX stack at ED and ES (NIfTI voxel order: X, Y, slice)."""

    image_ed: np.ndarray   # (X, Y, Z) int16, scanner-like units (blood ~ intensity_scale)
    image_es: np.ndarray   # (X, Y, Z) int16
    labels_ed: np.ndarray  # (X, Y, Z) uint8: 0 background, 1 LV blood, 2 LV myo, 3 RV blood
    labels_es: np.ndarray  # (X, Y, Z) uint8
    affine: np.ndarray     # (4, 4) voxel index -> world mm, RAS+ (same for both phases)
    tissue_ed: np.ndarray  # (X, Y, Z) uint8 tissue at the voxel centres, named by TISSUES
    tissue_es: np.ndarray  # (X, Y, Z) uint8 (for pictures and checks; not a model input)
    truth: dict[str, float] = field(default_factory=dict)  # generator's geometric values

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return spacing_from_affine(self.affine)


# ============================================================================================
# Anatomy constants (heart frame, mm). Values without a citation are modelling choices.
# ============================================================================================
# Longitudinal shortening: the atrioventricular-plane displacement (AVPD, 16.4 +- 0.5 mm for
# the LV in healthy volunteers) accounts for ~60 % of the LV stroke volume, the displaced
# volume being the epicardial base area x the AVPD (Carlsson M et al., Am J Physiol Heart Circ
# Physiol 2007;293:H636, "The quantitative relationship between longitudinal and radial
# function in left, right, and total heart pumping in humans", Abstract). Capped at 18 % of
# the cavity length (~16 mm for a 90 mm cavity) so outliers stay physiological.
LV_LONGITUDINAL_SV_FRACTION = 0.6
MAX_BASE_DESCENT_FRACTION = 0.18
# LV cavity shape: long/short semi-axis ratio at ED (a more spherical dilated ventricle), the
# base plane's position above the equator (fraction of the long semi-axis) and the apical wall.
LV_LONG_TO_SHORT = {"normal": 2.55, "conduction": 2.4, "dilated": 2.0, "hypertrophic": 2.7}
LV_LONG_TO_SHORT_SD = 0.12
LV_BASE_ABOVE_EQUATOR = 0.35
LV_ELLIPTICITY_SD = 0.04             # log sd of the cross-section's axis ratio
APEX_WALL_FRACTION = 0.8             # apical wall thickness / lateral wall thickness
# RV: half-ellipsoid from the base plane; in-plane semi-axes start at (1.0, 1.4) x the LV
# epicardial radius and grow about an anchor 0.3 radius inside the septum (so the crescent
# always wraps the septum); long semi-axis 0.8 x the LV epicardial length (the RV apex sits
# short of the LV apex).
RV_SEMI_AXES_PER_LV_RADIUS = (1.0, 1.4)
RV_ANCHOR_INSIDE_SEPTUM = 0.3
RV_LENGTH_PER_LV_LENGTH = 0.8
RV_WALL_MM = 3.0
RV_DIRECTION_TWIST_SD_DEG = 8.0      # RV position around the LV axis, subject to subject
RV_SHAPE_SD = 0.08                   # log sd of the RV's semi-axis ratios and length
# Papillary muscles: two, on the lateral wall +-55 deg off the direction opposite the septum,
# over the middle of the cavity; volume conserved between phases.
PAPILLARY_ANGLES_DEG = (125.0, 235.0)
PAPILLARY_ANGLE_SD_DEG = 10.0
PAPILLARY_RADIUS_PER_LV_RADIUS = 0.14
PAPILLARY_RADIAL_POSITION = 0.68     # centre, as a fraction of the way to the endocardium
PAPILLARY_LENGTH_PER_CAVITY = 0.2    # half-length / cavity length
PAPILLARY_POSITION_PER_CAVITY = 0.55  # centre depth / cavity length from the base
# Epicardial fat grows with BMI; extends a few mm above the base (atrioventricular groove).
EPI_FAT_MM_AT_BMI_22 = 1.5
EPI_FAT_MM_PER_BMI_UNIT = 0.2
EPI_FAT_EXTRA_MM = 1.5               # per-subject extra thickness U(0, extra)
AV_GROOVE_FAT_MM = 8.0
# Atria above the base plane: (h1, h2) centre and semi-axes in LV epicardial radii, h3 in mm.
LA_CENTRE = (-0.4, -0.35, -30.0)
LA_SEMI_AXES = (0.7, 0.7, 50.0)
RA_CENTRE = (0.9, 0.35, -25.0)
RA_SEMI_AXES = (0.75, 0.7, 45.0)

# Body (mm): an elliptic cylinder whose cross-section area scales with BMI x height (weight /
# height = BMI x height), ~320 x 220 mm at BMI 25 and 170 cm; subcutaneous fat thickens with
# BMI. The LV mid-cavity sits left of the midline, behind the anterior chest wall.
BODY_HALF_WIDTH_MM = 160.0
BODY_HALF_DEPTH_MM = 110.0
SUBCUT_FAT_MM_AT_BMI_18 = 5.0
SUBCUT_FAT_MM_PER_BMI_UNIT = 1.4
CHEST_MUSCLE_MM = 12.0
LV_CENTRE_LEFT_OF_MIDLINE_MM = 35.0
LV_CENTRE_BEHIND_CHEST_WALL_MM = 50.0
HEART_POSITION_SD_MM = 5.0
SPINE_RADIUS_MM = 20.0
SPINE_BEHIND_THORAX_MM = 8.0         # vertebral body's back edge in front of the thorax edge
AORTA_RADIUS_MM = 12.0
AORTA_X_MM = -22.0                   # descending aorta: left of the midline
MEDIASTINUM_X_MM = -12.0
MEDIASTINUM_HALF_WIDTH_MM = 38.0
DIAPHRAGM_DOME_RADIUS_MM = 250.0     # curvature of the dome
RIGHT_DIAPHRAGM_RISE_MM = 15.0       # the right hemidiaphragm sits higher (liver)
RIGHT_DOME_X_MM = 60.0               # x of the right dome's top (patient's right is +x)
LIVER_LEFT_EDGE_MM = -30.0           # below the diaphragm: liver right of this x, else stomach

# Default LV long-axis direction when the state has none (azimuth from the patient's left
# towards anterior, elevation downwards), matching ecgcmr.synth.physiology's means.
MAX_PLANNING_TILT_DEG = 10.0          # a planner would redo a stack tilted further

DEFAULT_AZIMUTH_DEG = 45.0
DEFAULT_AZIMUTH_SD_DEG = 8.0
DEFAULT_ELEVATION_DEG = 45.0
DEFAULT_ELEVATION_SD_DEG = 10.0

# Heart tissue classes (image only; see _HEART_LABEL for the labels) and body classes.
H_NONE, H_LV_BLOOD, H_PAPILLARY, H_LV_MYO, H_RV_BLOOD, H_RV_WALL, H_ATRIUM, H_FAT = range(8)
_HEART_LABEL = np.array(
    [LABEL_BACKGROUND, LABEL_LV_BLOOD, LABEL_LV_BLOOD, LABEL_LV_MYO, LABEL_RV_BLOOD,
     LABEL_BACKGROUND, LABEL_BACKGROUND, LABEL_BACKGROUND], dtype=np.uint8)
B_AIR, B_SUBCUT_FAT, B_MUSCLE, B_LUNG, B_LIVER, B_STOMACH, B_SPINE, B_AORTA, B_MED_FAT = range(9)
_HEART_TISSUE_OFFSET = B_MED_FAT  # heart code h >= 1 is tissue code h + 8
#: Names of the codes in ``SyntheticCmr.tissue_ed/_es`` (drawn but mostly unlabelled tissue).
TISSUES: tuple[str, ...] = (
    "air", "subcutaneous fat", "chest-wall muscle", "lung", "liver", "stomach", "spine",
    "descending aorta", "mediastinal fat",
    "LV blood", "papillary muscle", "LV myocardium", "RV blood", "RV free wall", "atrial blood",
    "epicardial fat",
)

# Relative bSSFP intensities (blood = 1). bSSFP contrast follows ~sqrt(T2/T1) (fluid and fat
# bright, muscle dark), with inflowing blood brighter still and magnetisation transfer
# darkening muscle; values are chosen to look like 1.5 T cine images, not simulated.
_HEART_INTENSITY = np.array([0.0, 1.0, 0.30, 0.28, 0.95, 0.30, 0.90, 0.80], dtype=np.float32)
_BODY_INTENSITY = np.array([0.0, 0.85, 0.22, 0.04, 0.33, 0.45, 0.50, 0.90, 0.72],
                           dtype=np.float32)
# Tissue kinds whose brightness varies together from subject to subject (flow, coil, B1):
# 0 none/air, 1 blood, 2 muscle, 3 fat, 4 lung, 5 liver, 6 stomach, 7 bone marrow.
_HEART_KIND = np.array([0, 1, 2, 2, 1, 2, 1, 3])
_BODY_KIND = np.array([0, 3, 2, 4, 5, 6, 7, 1, 3])
_N_KINDS = 8


# ============================================================================================
# Public API
# ============================================================================================


def render_cmr(
    state: Mapping[str, object],
    rng: np.random.Generator,
    spec: SaxSpec = SaxSpec(),
) -> SyntheticCmr:
    """Render one subject's SAX stack at ED and ES from its latent state.

    Args:
        state: the latent state (``ecgcmr.synth.physiology.sample_state``); uses
            ``lvedv_ml``, ``lvef`` (fraction), ``lvm_g``, ``rvedv_ml``, ``rvef`` (fraction),
            ``bmi`` and, when present, ``height_cm``, ``archetype``, ``heart_azimuth_deg``,
            ``heart_elevation_deg`` and ``subject_id`` (for error messages).
        rng: the only source of randomness; the same generator state gives the same output.
        spec: acquisition and rendering parameters.

    Returns:
        :class:`SyntheticCmr` with ``(X, Y, Z)`` int16 images, uint8 labels and the 4x4 affine.
    """
    targets = _targets(state)
    heart = _build_heart(targets, rng)
    body = _build_body(targets, heart, spec, rng)
    pose = _plan_stack(heart, body, spec, rng)
    contrast = _tissue_contrast(spec, rng)

    body_tissue, background = _render_body(body, pose, spec, contrast[1])     # (X, Y, Z)
    phases = _render_heart(heart, body.heart_origin, pose, spec, contrast[0])

    shading = _smooth_texture(pose.shape, spec, rng) * _bias_field(pose.shape, spec, rng)
    gain = spec.intensity_scale * math.exp(rng.uniform(-spec.gain_jitter, spec.gain_jitter))
    sigma = spec.noise_sigma * math.exp(rng.uniform(-spec.noise_jitter, spec.noise_jitter))
    images, labels, tissues = [], [], []
    for heart_tissue, frac, value in phases:
        clean = background.copy()
        clean[pose.crop] = value + (1.0 - frac) * background[pose.crop]
        noisy = _rician(clean * shading, sigma, rng)
        images.append(np.clip(np.rint(noisy * gain), 0, np.iinfo(np.int16).max).astype(np.int16))
        labels.append(_HEART_LABEL[heart_tissue])
        tissues.append(np.where(heart_tissue != H_NONE, heart_tissue + _HEART_TISSUE_OFFSET,
                                body_tissue).astype(np.uint8))

    truth = {**heart.truth(), "n_slices": float(pose.shape[2]),
             "planning_tilt_deg": float(pose.tilt_deg), "noise_sigma": float(sigma)}
    return SyntheticCmr(image_ed=images[0], image_es=images[1], labels_ed=labels[0],
                        labels_es=labels[1], affine=pose.affine, tissue_ed=tissues[0],
                        tissue_es=tissues[1], truth=truth)


# ============================================================================================
# State -> targets
# ============================================================================================


@dataclass(frozen=True)
class _Targets:
    subject: str | None
    lvedv_mm3: float
    lvesv_mm3: float
    myo_mm3: float
    rvedv_mm3: float
    rvesv_mm3: float
    bmi: float
    height_cm: float
    archetype: str
    azimuth_deg: float | None
    elevation_deg: float | None


def _targets(state: Mapping[str, object]) -> _Targets:
    """Validated geometry targets in mm^3 from the state (errors name the subject)."""
    subject = str(state["subject_id"]) if "subject_id" in state else None

    def number(key: str, lo: float, hi: float, default: float | None = None) -> float:
        if key not in state:
            if default is not None:
                return default
            raise DataError(f"latent state lacks {key!r}", subject=subject,
                            expected=f"{key} in the state")
        value = float(state[key])  # type: ignore[arg-type]
        if not (math.isfinite(value) and lo <= value <= hi):
            raise DataError(f"latent state {key} out of range", subject=subject,
                            expected=f"{lo} <= {key} <= {hi}", found=str(value))
        return value

    lvedv, lvef = number("lvedv_ml", 10.0, 1500.0), number("lvef", 0.02, 0.95)
    rvedv, rvef = number("rvedv_ml", 10.0, 1500.0), number("rvef", 0.02, 0.95)
    lvm = number("lvm_g", 10.0, 1500.0)

    def optional(key: str, lo: float, hi: float) -> float | None:
        return number(key, lo, hi) if key in state else None

    archetype = str(state.get("archetype", "normal"))
    return _Targets(
        subject=subject,
        lvedv_mm3=lvedv * MM3_PER_ML,
        lvesv_mm3=lvedv * (1.0 - lvef) * MM3_PER_ML,
        myo_mm3=lvm / MYOCARDIAL_DENSITY_G_PER_ML * MM3_PER_ML,
        rvedv_mm3=rvedv * MM3_PER_ML,
        rvesv_mm3=rvedv * (1.0 - rvef) * MM3_PER_ML,
        bmi=number("bmi", 10.0, 80.0, default=26.0),
        height_cm=number("height_cm", 100.0, 230.0, default=170.0),
        archetype=archetype if archetype in LV_LONG_TO_SHORT else "normal",
        azimuth_deg=optional("heart_azimuth_deg", -180.0, 180.0),
        elevation_deg=optional("heart_elevation_deg", -90.0, 90.0),
    )


# ============================================================================================
# Heart geometry (heart frame, mm)
# ============================================================================================


@dataclass(frozen=True)
class _Lv:
    """LV at one phase: truncated ellipsoids sharing centre and base plane."""

    base_z: float   # h3 of the base plane
    centre_z: float  # h3 of the ellipsoids' centre (base_z + f c)
    a1: float       # endocardial semi-axis along h1
    a2: float       # endocardial semi-axis along h2
    c: float        # endocardial semi-axis along h3
    wall: float     # wall thickness (short axes)

    @property
    def epi(self) -> tuple[float, float, float]:
        return (self.a1 + self.wall, self.a2 + self.wall, self.c + APEX_WALL_FRACTION * self.wall)

    @property
    def epi_radius(self) -> float:
        a1, a2, _ = self.epi
        return math.sqrt(a1 * a2)

    @property
    def endo_apex_z(self) -> float:
        return self.centre_z + self.c

    @property
    def epi_apex_z(self) -> float:
        return self.centre_z + self.epi[2]

    def endo_volume(self) -> float:
        return _truncated_ellipsoid_volume(self.a1, self.a2, self.c, self.centre_z - self.base_z)

    def epi_volume(self) -> float:
        a1, a2, c = self.epi
        return _truncated_ellipsoid_volume(a1, a2, c, self.centre_z - self.base_z)


@dataclass(frozen=True)
class _Rv:
    """RV at one phase: half-ellipsoid from the base plane, minus the LV epicardium."""

    base_z: float
    centre_x: float  # h1 of the ellipsoid centre (h2 = 0, h3 = base_z)
    p: float        # semi-axis along h1
    q: float        # semi-axis along h2
    r: float        # semi-axis along h3 (towards the apex)


@dataclass(frozen=True)
class _Phase:
    lv: _Lv
    rv: _Rv
    papillary_radius: float
    papillary_half_length: float


@dataclass(frozen=True)
class _Heart:
    ed: _Phase
    es: _Phase
    u: np.ndarray       # (3,) world direction of the LV long axis, base -> apex
    e1: np.ndarray      # (3,) world direction from the LV axis towards the RV
    e2: np.ndarray      # (3,) u x e1
    papillary_angles: tuple[float, float]  # radians, in the (h1, h2) plane
    fat_mm: float
    rv_volume_ed: float  # geometric volumes (mm^3) reached by the solver
    rv_volume_es: float

    @property
    def frame(self) -> np.ndarray:
        """(3, 3) columns e1, e2, u: heart coordinates -> world directions."""
        return np.stack([self.e1, self.e2, self.u], axis=1)

    def truth(self) -> dict[str, float]:
        ed, es = self.ed.lv, self.es.lv
        return {
            "lvedv_geom_ml": ed.endo_volume() / MM3_PER_ML,
            "lvesv_geom_ml": es.endo_volume() / MM3_PER_ML,
            "lv_myo_ed_geom_ml": (ed.epi_volume() - ed.endo_volume()) / MM3_PER_ML,
            "lv_myo_es_geom_ml": (es.epi_volume() - es.endo_volume()) / MM3_PER_ML,
            "rvedv_geom_ml": float(self.rv_volume_ed) / MM3_PER_ML,
            "rvesv_geom_ml": float(self.rv_volume_es) / MM3_PER_ML,
            "wall_ed_mm": ed.wall,
            "wall_es_mm": es.wall,
            "base_descent_mm": es.base_z - ed.base_z,
            "lv_cavity_length_ed_mm": ed.endo_apex_z - ed.base_z,
        }


def _truncated_ellipsoid_volume(a1: float, a2: float, c: float, cut: float) -> float:
    """Volume of {x²/a1² + y²/a2² + z²/c² <= 1, z >= -cut}, 0 <= cut <= c (mm^3).

    pi a1 a2 * integral_{-cut}^{c} (1 - z²/c²) dz = pi a1 a2 [(c + cut) - (c³ + cut³) / (3 c²)].
    """
    return math.pi * a1 * a2 * ((c + cut) - (c**3 + cut**3) / (3.0 * c * c))


def _lv_cavity(volume: float, base_z: float, length: float | None, ratio: float,
               ellipticity: float) -> tuple[float, float, float, float]:
    """Cavity (centre_z, a1, a2, c) of a given volume: either the shape ratio c/a is fixed
    (ED) or the cavity length from base to apex is (ES; the apex does not move)."""
    f = LV_BASE_ABOVE_EQUATOR
    shape = (1.0 + f) - (1.0 + f**3) / 3.0  # V = pi a² c * shape
    if length is None:
        a = (volume / (math.pi * ratio * shape)) ** (1.0 / 3.0)
        c = ratio * a
    else:
        c = length / (1.0 + f)
        a = math.sqrt(volume / (math.pi * c * shape))
    return base_z + f * c, a * ellipticity, a / ellipticity, c


def _solve_wall(base_z: float, centre_z: float, a1: float, a2: float, c: float,
                myo_volume: float) -> _Lv:
    """The LV whose shell (epicardium minus cavity) holds ``myo_volume`` mm^3."""

    def excess(wall: float) -> float:
        lv = _Lv(base_z, centre_z, a1, a2, c, wall)
        return lv.epi_volume() - lv.endo_volume() - myo_volume

    wall = brentq(excess, 0.0, 80.0, xtol=1e-4)
    return _Lv(base_z, centre_z, a1, a2, c, float(wall))


@functools.lru_cache(maxsize=1)
def _unit_half_ball(n: int = 36) -> np.ndarray:
    """(N, 3) cell centres of an n x n x n/2 grid inside the unit half-ball (u3 >= 0):
    a fixed quadrature for the RV volume (no randomness, so the solve is deterministic)."""
    g = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    g3 = (np.arange(n // 2) + 0.5) / (n // 2)
    pts = np.stack(np.meshgrid(g, g, g3, indexing="ij"), axis=-1).reshape(-1, 3)
    pts = pts[np.einsum("ij,ij->i", pts, pts) <= 1.0]
    pts.setflags(write=False)
    return pts


def _rv_at_scale(scale: float, lv: _Lv, r: float, base_p: float, base_q: float) -> _Rv:
    anchor = -RV_ANCHOR_INSIDE_SEPTUM * lv.epi_radius
    p, q = scale * base_p, scale * base_q
    return _Rv(base_z=lv.base_z, centre_x=anchor + p, p=p, q=q, r=r)


def _rv_volume(rv: _Rv, lv: _Lv) -> float:
    """Volume (mm^3) of the RV half-ellipsoid outside the LV epicardium (quadrature)."""
    u = _unit_half_ball()
    h1 = rv.centre_x + rv.p * u[:, 0]
    h2 = rv.q * u[:, 1]
    dz = lv.base_z + rv.r * u[:, 2] - lv.centre_z
    e1, e2, e3 = lv.epi
    inside_lv = (h1 / e1) ** 2 + (h2 / e2) ** 2 + (dz / e3) ** 2 <= 1.0
    half_ball = 2.0 / 3.0 * math.pi * rv.p * rv.q * rv.r
    return half_ball * float(np.count_nonzero(~inside_lv)) / len(u)


def _solve_rv(volume: float, lv: _Lv, r: float, base_p: float, base_q: float) -> tuple[_Rv, float]:
    """Grow the RV about its septal anchor until its crescent holds ``volume`` mm^3."""

    def excess(scale: float) -> float:
        return _rv_volume(_rv_at_scale(scale, lv, r, base_p, base_q), lv) - volume

    hi = 2.0
    while excess(hi) < 0:  # monotone in scale (nested shapes); a huge RV needs a larger bracket
        hi *= 2.0
    scale = brentq(excess, 0.05, hi, xtol=1e-4)
    rv = _rv_at_scale(scale, lv, r, base_p, base_q)
    return rv, _rv_volume(rv, lv)


def _build_heart(t: _Targets, rng: np.random.Generator) -> _Heart:
    """Solve the ED and ES geometry for the targets; draw shape and orientation variation."""
    # the same variates are drawn whatever the state holds, so streams stay aligned
    ratio = LV_LONG_TO_SHORT[t.archetype] * math.exp(LV_LONG_TO_SHORT_SD * rng.standard_normal())
    ellipticity = math.exp(LV_ELLIPTICITY_SD * rng.standard_normal())
    rv_jitter = np.exp(RV_SHAPE_SD * rng.standard_normal(3))  # RV semi-axis ratios and length
    twist = math.radians(RV_DIRECTION_TWIST_SD_DEG * rng.standard_normal())
    pap_angles = (math.radians(PAPILLARY_ANGLES_DEG[0] + PAPILLARY_ANGLE_SD_DEG * rng.standard_normal()),
                  math.radians(PAPILLARY_ANGLES_DEG[1] + PAPILLARY_ANGLE_SD_DEG * rng.standard_normal()))
    fat_mm = max(0.5, EPI_FAT_MM_AT_BMI_22 + EPI_FAT_MM_PER_BMI_UNIT * (t.bmi - 22.0)
                 + rng.uniform(0.0, EPI_FAT_EXTRA_MM))
    default_az = DEFAULT_AZIMUTH_DEG + DEFAULT_AZIMUTH_SD_DEG * rng.standard_normal()
    default_el = DEFAULT_ELEVATION_DEG + DEFAULT_ELEVATION_SD_DEG * rng.standard_normal()
    az = default_az if t.azimuth_deg is None else t.azimuth_deg
    el = default_el if t.elevation_deg is None else t.elevation_deg

    # ED: shape ratio fixed; ES: apex fixed, base descends by the AV-plane displacement.
    centre, a1, a2, c = _lv_cavity(t.lvedv_mm3, 0.0, None, ratio, ellipticity)
    lv_ed = _solve_wall(0.0, centre, a1, a2, c, t.myo_mm3)
    length_ed = lv_ed.endo_apex_z - lv_ed.base_z
    e_a1, e_a2, e_c = lv_ed.epi
    cut = lv_ed.centre_z - lv_ed.base_z
    base_area = math.pi * e_a1 * e_a2 * (1.0 - (cut / e_c) ** 2)
    stroke = t.lvedv_mm3 - t.lvesv_mm3
    descent = min(LV_LONGITUDINAL_SV_FRACTION * stroke / base_area,
                  MAX_BASE_DESCENT_FRACTION * length_ed)
    centre, a1, a2, c = _lv_cavity(t.lvesv_mm3, descent, length_ed - descent, ratio, ellipticity)
    lv_es = _solve_wall(descent, centre, a1, a2, c, t.myo_mm3)

    # RV: apex fixed too, so it shortens by the same descent.
    base_p = RV_SEMI_AXES_PER_LV_RADIUS[0] * lv_ed.epi_radius * rv_jitter[0]
    base_q = RV_SEMI_AXES_PER_LV_RADIUS[1] * lv_ed.epi_radius * rv_jitter[1]
    r_ed = RV_LENGTH_PER_LV_LENGTH * (lv_ed.epi_apex_z - lv_ed.base_z) * rv_jitter[2]
    rv_ed, vol_ed = _solve_rv(t.rvedv_mm3, lv_ed, r_ed, base_p, base_q)
    rv_es, vol_es = _solve_rv(t.rvesv_mm3, lv_es, r_ed - descent, base_p, base_q)

    # Papillary muscles keep their volume: radius² x length constant.
    pap_r_ed = PAPILLARY_RADIUS_PER_LV_RADIUS * math.sqrt(lv_ed.a1 * lv_ed.a2)
    pap_len_ed = PAPILLARY_LENGTH_PER_CAVITY * length_ed
    pap_len_es = PAPILLARY_LENGTH_PER_CAVITY * (length_ed - descent)
    pap_r_es = pap_r_ed * math.sqrt(pap_len_ed / pap_len_es)

    u = _long_axis_direction(az, el)
    toward_rv = np.array([1.0, 1.0, 0.0]) / math.sqrt(2.0)  # RAS: the RV is right-anterior
    e1 = toward_rv - (toward_rv @ u) * u
    e1 = _rotate(e1 / np.linalg.norm(e1), u, twist)
    e2 = np.cross(u, e1)
    return _Heart(
        ed=_Phase(lv_ed, rv_ed, pap_r_ed, pap_len_ed),
        es=_Phase(lv_es, rv_es, pap_r_es, pap_len_es),
        u=u, e1=e1, e2=e2, papillary_angles=pap_angles,
        fat_mm=fat_mm, rv_volume_ed=vol_ed, rv_volume_es=vol_es,
    )


def _long_axis_direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector (RAS+) of the LV long axis, base -> apex: azimuth in the horizontal plane
    from the patient's left (-x) towards anterior (+y), elevation downwards (-z)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    v = np.array([-math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), -math.sin(el)])
    return v / np.linalg.norm(v)


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of ``v`` about unit ``axis`` by ``angle`` radians."""
    return (v * math.cos(angle) + np.cross(axis, v) * math.sin(angle)
            + axis * (axis @ v) * (1.0 - math.cos(angle)))


# ============================================================================================
# Body and stack placement (world = RAS+ mm)
# ============================================================================================


@dataclass(frozen=True)
class _Body:
    half_width: float      # outer ellipse semi-axis along x (mm)
    half_depth: float      # along y
    fat: float             # subcutaneous fat thickness
    origin: np.ndarray     # (3,) world position of the body-frame origin
    heart_origin: np.ndarray  # (3,) world position of the heart-frame origin (ED base centre)
    lv_mid: np.ndarray     # (3,) world position of the ED LV mid-cavity point
    spine_xy: tuple[float, float]
    aorta_xy: tuple[float, float]
    med_fat: tuple[float, float, float, float]  # centre x, y, semi-axes (body frame)
    diaphragm_top: tuple[float, float, float]  # (x, y, z) top of the dome under the heart


def _build_body(t: _Targets, heart: _Heart, spec: SaxSpec, rng: np.random.Generator) -> _Body:
    size = math.sqrt(t.bmi / 25.0 * t.height_cm / 170.0)
    half_width, half_depth = BODY_HALF_WIDTH_MM * size, BODY_HALF_DEPTH_MM * size
    fat = max(3.0, SUBCUT_FAT_MM_AT_BMI_18 + SUBCUT_FAT_MM_PER_BMI_UNIT * (t.bmi - 18.0))
    inner_depth = half_depth - fat - CHEST_MUSCLE_MM
    jitter = HEART_POSITION_SD_MM * rng.standard_normal(2)
    lv_mid_body = np.array([-LV_CENTRE_LEFT_OF_MIDLINE_MM + jitter[0],
                            inner_depth - LV_CENTRE_BEHIND_CHEST_WALL_MM + jitter[1], 0.0])
    origin = rng.uniform(-1.0, 1.0, 3) * spec.max_table_offset_mm  # table position

    ed = heart.ed.lv
    heart_origin_body = lv_mid_body - 0.5 * (ed.endo_apex_z - ed.base_z) * heart.u
    # The heart rests on the diaphragm: put the dome just under the lowest epicardial point.
    lowest = _lowest_epicardial_z(heart, heart_origin_body)
    # vertebral body just in front of the back muscles; the descending aorta left-anterior of
    # it; mediastinal fat fills the space between them and the heart
    spine_y = -inner_depth + SPINE_RADIUS_MM + SPINE_BEHIND_THORAX_MM
    spine_xy = (0.0, spine_y)
    aorta_xy = (AORTA_X_MM, spine_y + SPINE_RADIUS_MM + AORTA_RADIUS_MM + 2.0)
    med_fat = (MEDIASTINUM_X_MM, 0.5 * (spine_y + lv_mid_body[1]), MEDIASTINUM_HALF_WIDTH_MM,
               0.5 * (lv_mid_body[1] - spine_y) + 5.0)
    return _Body(
        half_width=half_width, half_depth=half_depth, fat=fat, origin=origin,
        heart_origin=heart_origin_body + origin, lv_mid=lv_mid_body + origin,
        spine_xy=spine_xy, aorta_xy=aorta_xy, med_fat=med_fat,
        diaphragm_top=(float(lv_mid_body[0]), float(lv_mid_body[1]), lowest - 3.0),
    )


def _lowest_epicardial_z(heart: _Heart, heart_origin: np.ndarray) -> float:
    """Lowest world z (body frame) of the ED LV epicardium, from points on its surface."""
    lv = heart.ed.lv
    a1, a2, c = lv.epi
    theta = np.linspace(0.0, math.pi, 13)
    phi = np.linspace(0.0, 2.0 * math.pi, 24, endpoint=False)
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    h = np.stack([a1 * np.sin(th) * np.cos(ph), a2 * np.sin(th) * np.sin(ph),
                  lv.centre_z + c * np.cos(th)], axis=-1).reshape(-1, 3)
    h = h[h[:, 2] >= lv.base_z]
    world = heart_origin + h @ heart.frame.T
    return float(world[:, 2].min())


@dataclass(frozen=True)
class _Pose:
    affine: np.ndarray                 # (4, 4) voxel -> world
    shape: tuple[int, int, int]        # (X, Y, Z)
    crop: tuple[slice, slice, slice]   # voxels that may contain heart
    tilt_deg: float

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) unit columns: world directions of the X, Y, slice axes."""
        return self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)


def _plan_stack(heart: _Heart, body: _Body, spec: SaxSpec, rng: np.random.Generator) -> _Pose:
    """Plan the SAX stack: normal along the LV long axis (plus a planning tilt), slices from
    just above the ED base to beyond the apex, random in-plane rotation and shift."""
    u = heart.u
    tilt = min(abs(spec.planning_tilt_sd_deg * rng.standard_normal()), MAX_PLANNING_TILT_DEG)
    tilt_about = np.cross(u, _rotate(heart.e1, u, rng.uniform(0.0, 2.0 * math.pi)))
    normal = _rotate(u, tilt_about / np.linalg.norm(tilt_about), math.radians(tilt))
    # usual view: image y towards anterior (or superior when the axis is nearly anterior)
    ref = np.array([0.0, 1.0, 0.0])
    if np.linalg.norm(ref - (ref @ normal) * normal) < 0.3:
        ref = np.array([0.0, 0.0, 1.0])
    ey = ref - (ref @ normal) * normal
    ey /= np.linalg.norm(ey)
    psi = math.radians(rng.uniform(-spec.max_inplane_rotation_deg, spec.max_inplane_rotation_deg))
    ey = _rotate(ey, normal, psi)
    ex = np.cross(ey, normal)  # (ex, ey, normal) right-handed

    sp = spec.slice_spacing_mm
    lv_ed = heart.ed.lv
    apex_world = body.heart_origin + max(lv_ed.epi_apex_z, heart.es.lv.epi_apex_z) * u
    z_base = float((body.heart_origin - body.lv_mid) @ normal)
    z_apex = float((apex_world - body.lv_mid) @ normal)
    z_first = z_base - rng.uniform(0.0, 1.0) * sp
    # last slice centre within (apex - 5, apex + 12] mm: the apex is always inside the stack's
    # coverage, sometimes with an empty slice beyond it
    margin = rng.uniform(5.0, 12.0)
    n_slices = spec.n_slices or int(math.floor((z_apex + margin - z_first) / sp)) + 1
    nx, ny = spec.matrix
    dx = spec.pixel_mm
    shift = [_inplane_shift(heart, body, axis, (n - 1) / 2.0 * dx, spec.max_inplane_shift_mm,
                            rng.uniform()) for axis, n in ((ex, nx), (ey, ny))]

    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = dx * ex, dx * ey, sp * normal
    affine[:3, 3] = (body.lv_mid + z_first * normal
                     - ((nx - 1) / 2.0 * dx + shift[0]) * ex
                     - ((ny - 1) / 2.0 * dx + shift[1]) * ey)
    shape = (nx, ny, n_slices)
    return _Pose(affine=affine, shape=shape, crop=_heart_crop(heart, body, affine, shape),
                 tilt_deg=tilt)


def _inplane_shift(heart: _Heart, body: _Body, axis: np.ndarray, half_fov: float,
                   max_shift: float, u: float) -> float:
    """Offset (mm) of the heart from the FOV centre along ``axis``, uniform (``u`` in [0, 1))
    over the shifts within +-``max_shift`` that keep both ventricles 3 mm inside the FOV
    (the ventricles are centred when they do not fit)."""
    pts = []
    for ph in (heart.ed, heart.es):
        lv, rv = ph.lv, ph.rv
        e1, e2, _ = lv.epi
        for h1 in (-e1, rv.centre_x + rv.p):
            for h2 in (-max(e2, rv.q), max(e2, rv.q)):
                for h3 in (lv.base_z, lv.epi_apex_z):
                    pts.append((h1, h2, h3))
    proj = (body.heart_origin + np.asarray(pts) @ heart.frame.T - body.lv_mid) @ axis
    lo = max(-max_shift, -half_fov + 3.0 - float(proj.min()))
    hi = min(max_shift, half_fov - 3.0 - float(proj.max()))
    if lo > hi:
        return float(np.clip(-0.5 * (proj.min() + proj.max()), -max_shift, max_shift))
    return lo + u * (hi - lo)


def _heart_crop(heart: _Heart, body: _Body, affine: np.ndarray,
                shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """In-plane voxel box holding every heart structure at either phase (+2 voxels)."""
    pts = []
    for ph in (heart.ed, heart.es):
        lv, rv = ph.lv, ph.rv
        e1, e2, e3 = lv.epi
        pad = heart.fat_mm + RV_WALL_MM + 2.0
        h1_lo = min(-e1, LA_CENTRE[0] * lv.epi_radius - LA_SEMI_AXES[0] * lv.epi_radius) - pad
        h1_hi = max(rv.centre_x + rv.p, (RA_CENTRE[0] + RA_SEMI_AXES[0]) * lv.epi_radius) + pad
        h2_hi = max(e2, rv.q, (abs(RA_CENTRE[1]) + RA_SEMI_AXES[1]) * lv.epi_radius,
                    (abs(LA_CENTRE[1]) + LA_SEMI_AXES[1]) * lv.epi_radius) + pad
        for h1 in (h1_lo, h1_hi):
            for h2 in (-h2_hi, h2_hi):
                for h3 in (lv.base_z - 40.0, lv.centre_z + e3 + pad):
                    pts.append((h1, h2, h3))
    world = body.heart_origin + np.asarray(pts) @ heart.frame.T
    vox = (world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    lo = np.floor(vox.min(axis=0)).astype(int) - 2
    hi = np.ceil(vox.max(axis=0)).astype(int) + 3
    x = slice(max(0, lo[0]), min(shape[0], hi[0]))
    y = slice(max(0, lo[1]), min(shape[1], hi[1]))
    if x.start >= x.stop or y.start >= y.stop:
        x, y = slice(0, 0), slice(0, 0)
    return (x, y, slice(0, shape[2]))


# ============================================================================================
# Rendering
# ============================================================================================


def _tissue_contrast(spec: SaxSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-subject tissue intensities (heart classes, body classes), blood ~ 1: a shared
    factor per tissue kind (all blood pools alike) and a smaller one per structure."""
    kind = np.exp(spec.contrast_jitter * rng.standard_normal(_N_KINDS))
    heart = _HEART_INTENSITY * kind[_HEART_KIND] * np.exp(
        0.3 * spec.contrast_jitter * rng.standard_normal(_HEART_INTENSITY.shape))
    body = _BODY_INTENSITY * kind[_BODY_KIND] * np.exp(
        0.3 * spec.contrast_jitter * rng.standard_normal(_BODY_INTENSITY.shape))
    return heart.astype(np.float32), body.astype(np.float32)


#: Voxels per chunk (a few slices): temporaries stay small.
CHUNK_POINTS = 65536
#: In-plane voxels per side of the blocks that first decide which voxels each layer surely
#: covers or misses; only the rest are evaluated voxel by voxel.
BLOCK_VOXELS = 4
_BLOCK_SLACK = 1e-3  # margin a block's decision must clear (radius units / mm): >> float32 error


def _sample_offsets(n: int) -> np.ndarray:
    """Centres of n equal sub-intervals of [-0.5, 0.5] (just 0 for n = 1)."""
    return (np.arange(n) + 0.5) / n - 0.5


# --------------------------------------------------------------------------------------------
# Anatomy as layers of simple solids, painted in order (later layers win)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ellipsoid:
    """Solid ellipsoid in some frame; an axis of ``None`` is unbounded (elliptic cylinder)."""

    centre: tuple[float, float, float]
    axes: tuple[float | None, float | None, float | None]


@dataclass(frozen=True)
class _HalfSpace:
    """Points with coordinate ``axis`` >= ``at`` (``above``) or < ``at``."""

    axis: int
    at: float
    above: bool = True


@dataclass(frozen=True)
class _Layer:
    """A tissue occupying the intersection of its groups (each a union of ellipsoids) and its
    half-spaces; with ``only_over`` it is painted only where that tissue already is."""

    tissue: int
    groups: tuple[tuple[_Ellipsoid, ...], ...]
    half_spaces: tuple[_HalfSpace, ...] = ()
    only_over: int | None = None


def _heart_layers(ph: _Phase, heart: _Heart) -> tuple[_Layer, ...]:
    """The heart at one phase, in the heart frame (mm)."""
    lv, rv = ph.lv, ph.rv
    e1, e2, e3 = lv.epi
    f, w = heart.fat_mm, RV_WALL_MM
    lv_c = (0.0, 0.0, lv.centre_z)
    rv_c = (rv.centre_x, 0.0, rv.base_z)
    ventricular = (_HalfSpace(2, lv.base_z),)
    radius = lv.epi_radius
    atria = tuple(
        _Ellipsoid((c[0] * radius, c[1] * radius, c[2]), (a[0] * radius, a[1] * radius, a[2]))
        for c, a in ((LA_CENTRE, LA_SEMI_AXES), (RA_CENTRE, RA_SEMI_AXES)))
    pap_depth = lv.base_z + PAPILLARY_POSITION_PER_CAVITY * (lv.endo_apex_z - lv.base_z)
    papillary = tuple(
        _Ellipsoid((PAPILLARY_RADIAL_POSITION * lv.a1 * math.cos(angle),
                    PAPILLARY_RADIAL_POSITION * lv.a2 * math.sin(angle), pap_depth),
                   (ph.papillary_radius, ph.papillary_radius, ph.papillary_half_length))
        for angle in heart.papillary_angles)
    return (
        _Layer(H_FAT, ((_Ellipsoid(lv_c, (e1 + f, e2 + f, e3 + f)),
                        _Ellipsoid(rv_c, (rv.p + w + f, rv.q + w + f, rv.r + w + f))),),
               (_HalfSpace(2, lv.base_z - AV_GROOVE_FAT_MM),)),
        _Layer(H_ATRIUM, (atria,), (_HalfSpace(2, lv.base_z, above=False),)),
        _Layer(H_RV_WALL, ((_Ellipsoid(rv_c, (rv.p + w, rv.q + w, rv.r + w)),),), ventricular),
        _Layer(H_RV_BLOOD, ((_Ellipsoid(rv_c, (rv.p, rv.q, rv.r)),),), ventricular),
        _Layer(H_LV_MYO, ((_Ellipsoid(lv_c, (e1, e2, e3)),),), ventricular),
        _Layer(H_LV_BLOOD, ((_Ellipsoid(lv_c, (lv.a1, lv.a2, lv.c)),),), ventricular),
        _Layer(H_PAPILLARY, (papillary,), only_over=H_LV_BLOOD),
    )


def _body_layers(body: _Body) -> tuple[_Layer, ...]:
    """The chest in the body frame (world axes, origin ``body.origin``; mm)."""
    w, d, wall = body.half_width, body.half_depth, body.fat + CHEST_MUSCLE_MM
    thorax = (_Ellipsoid((0.0, 0.0, 0.0), (w - wall, d - wall, None)),)
    lx, ly, top = body.diaphragm_top
    r = DIAPHRAGM_DOME_RADIUS_MM
    # the diaphragm: two domes (spheres seen from below), the right one higher over the liver
    domes = (_Ellipsoid((lx, ly, top - r), (r, r, r)),
             _Ellipsoid((RIGHT_DOME_X_MM, ly, top + RIGHT_DIAPHRAGM_RISE_MM - r), (r, r, r)))
    mx, my, ma, mb = body.med_fat
    (sx, sy), (ax, ay) = body.spine_xy, body.aorta_xy
    return (
        _Layer(B_SUBCUT_FAT, ((_Ellipsoid((0.0, 0.0, 0.0), (w, d, None)),),)),
        _Layer(B_MUSCLE, ((_Ellipsoid((0.0, 0.0, 0.0), (w - body.fat, d - body.fat, None)),),)),
        _Layer(B_LUNG, (thorax,)),
        _Layer(B_MED_FAT, (thorax, (_Ellipsoid((mx, my, 0.0), (ma, mb, None)),))),
        _Layer(B_LIVER, (thorax, domes), (_HalfSpace(0, LIVER_LEFT_EDGE_MM),)),
        _Layer(B_STOMACH, (thorax, domes), (_HalfSpace(0, LIVER_LEFT_EDGE_MM, above=False),)),
        _Layer(B_SPINE, (thorax, (_Ellipsoid((sx, sy, 0.0), (SPINE_RADIUS_MM,) * 2 + (None,)),))),
        _Layer(B_AORTA, (thorax, (_Ellipsoid((ax, ay, 0.0), (AORTA_RADIUS_MM,) * 2 + (None,)),))),
    )


class _Squares:
    """Squared offsets (x_k - c)² of a point set, computed once per (axis, centre), and the
    quadric of each ellipsoid, computed once per ellipsoid (painting and the straddling test
    share them)."""

    def __init__(self, coords: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.coords = coords
        self._cache: dict[tuple[int, float], np.ndarray] = {}
        self._quadrics: dict[_Ellipsoid, np.ndarray] = {}

    def get(self, axis: int, centre: float) -> np.ndarray:
        key = (axis, centre)
        if key not in self._cache:
            d = self.coords[axis] - np.float32(centre)
            self._cache[key] = d * d
        return self._cache[key]

    def quadric(self, e: _Ellipsoid) -> np.ndarray:
        """sum_k (x_k - c_k)² / a_k² over the bounded axes (float32); read-only."""
        q = self._quadrics.get(e)
        if q is None:
            for k in range(3):
                a = e.axes[k]
                if a is None:
                    continue
                term = self.get(k, e.centre[k]) * np.float32(1.0 / (a * a))
                q = term if q is None else np.add(q, term, out=q)
            assert q is not None, "an ellipsoid needs at least one bounded axis"
            self._quadrics[e] = q
        return q


def _layer_mask(layer: _Layer, sq: _Squares) -> np.ndarray | None:
    """Where ``layer``'s solid is (before ``only_over``); None for a layer of no parts."""
    coords = sq.coords
    mask: np.ndarray | None = None
    for group in layer.groups:
        inside = functools.reduce(np.logical_or, (sq.quadric(e) <= 1.0 for e in group))
        mask = inside if mask is None else np.logical_and(mask, inside, out=mask)
    for hs in layer.half_spaces:
        side = coords[hs.axis] >= hs.at if hs.above else coords[hs.axis] < hs.at
        mask = side if mask is None else np.logical_and(mask, side, out=mask)
    return mask


def _paint(layers: tuple[_Layer, ...], coords: tuple[np.ndarray, np.ndarray, np.ndarray]
           ) -> np.ndarray:
    """Tissue code (uint8) at each point; 0 where no layer is. The rule, point by point:
    :func:`_render_layers` gives the same codes while evaluating far fewer points."""
    sq = _Squares(coords)
    tissue = np.zeros(coords[0].shape, dtype=np.uint8)
    for layer in layers:
        mask = _layer_mask(layer, sq)
        if layer.only_over is not None:
            assert mask is not None
            mask &= tissue == layer.only_over
        tissue[mask] = layer.tissue
    return tissue


def _layer_bounds(layers: tuple[_Layer, ...], sq: _Squares, half_extent: np.ndarray,
                  slack: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, per voxel centre: (might the voxel reach inside the layer, might it reach
    outside). A voxel straddles the layer where both hold.

    ``half_extent`` (3, 3): rows are the voxel's half-edge vectors in this frame. Conservative
    bounds: a point p + d of the voxel has |sqrt(q(p + d)) - sqrt(q(p))| <= |D d| <=
    sum_j |D v_j| (D = diag(1/a)), and |x_k(p + d) - x_k(p)| <= sum_j |v_jk| for a half-space.
    ``slack`` widens every reach (radius units for ellipsoids, mm for half-spaces).
    """
    coords = sq.coords
    cache: dict[object, tuple[np.ndarray, np.ndarray]] = {}

    def solid(e: _Ellipsoid) -> tuple[np.ndarray, np.ndarray]:  # (maybe inside, maybe outside)
        if e not in cache:
            inv = np.array([0.0 if a is None else 1.0 / a for a in e.axes])
            reach = np.float32(np.linalg.norm(half_extent * inv[None, :], axis=1).sum())
            if slack:
                reach = reach + slack
            r = np.sqrt(sq.quadric(e))
            cache[e] = (r - reach <= 1.0, r + reach > 1.0)
        return cache[e]

    def plane(hs: _HalfSpace) -> tuple[np.ndarray, np.ndarray]:
        if hs not in cache:
            reach = np.float32(np.abs(half_extent[:, hs.axis]).sum())
            if slack:
                reach = reach + slack
            signed = coords[hs.axis] - np.float32(hs.at)
            if not hs.above:
                signed = -signed
            cache[hs] = (signed + reach >= 0.0, signed - reach < 0.0)
        return cache[hs]

    bounds = []
    for layer in layers:
        parts = [plane(hs) for hs in layer.half_spaces]
        for group in layer.groups:  # a union: maybe inside any, maybe outside all
            ins, outs = zip(*(solid(e) for e in group), strict=True)
            parts.append((functools.reduce(np.logical_or, ins),
                          functools.reduce(np.logical_and, outs)))
        # an intersection: maybe inside all, maybe outside any
        bounds.append((functools.reduce(np.logical_and, (p[0] for p in parts)),
                       functools.reduce(np.logical_or, (p[1] for p in parts))))
    return bounds


def _voxel_layers(layers: tuple[_Layer, ...], centre: tuple[np.ndarray, ...],
                  block_centre: tuple[np.ndarray, ...], half_extent: np.ndarray,
                  block_half_extent: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per layer, per voxel: (inside at the centre, maybe inside, maybe outside), as
    :func:`_layer_mask` and :func:`_layer_bounds` give them, evaluated voxel by voxel only in
    the blocks that may straddle the layer.

    ``centre`` holds the voxels block by block (block ``i`` is voxels ``i * B² ...``),
    ``block_centre`` the blocks' centres. A block's bounds cover every voxel in it
    (``block_half_extent``: its half-edges; a voxel's centre +- its reach lies within the
    block's centre +- the block's reach), and a block decides only by a margin
    (``_BLOCK_SLACK``) far above float32 rounding, so the result equals evaluating every voxel.
    """
    per_block = centre[0].size // block_centre[0].size
    blocks = _layer_bounds(layers, _Squares(block_centre), block_half_extent,  # type: ignore[arg-type]
                           slack=_BLOCK_SLACK)
    out = []
    for layer, (block_in, block_out) in zip(layers, blocks, strict=True):
        inside = np.repeat(block_in & ~block_out, per_block)
        maybe_in, maybe_out = np.repeat(block_in, per_block), np.repeat(block_out, per_block)
        todo = np.flatnonzero(block_in & block_out)
        if todo.size:
            todo = (todo[:, None] * per_block + np.arange(per_block)).ravel()
            sq = _Squares(tuple(c[todo] for c in centre))  # type: ignore[arg-type]
            inside[todo] = _layer_mask(layer, sq)
            ((maybe_in[todo], maybe_out[todo]),) = _layer_bounds((layer,), sq, half_extent)
        out.append((inside, maybe_in, maybe_out))
    return out


def _paint_samples(layers: tuple[_Layer, ...], centres: tuple[np.ndarray, ...],
                   offsets: np.ndarray, bounds: list[tuple[np.ndarray, np.ndarray]],
                   samples_half_extent: np.ndarray) -> np.ndarray:
    """Tissue code ``(S, n)`` at the sub-samples ``centres[k][None, :] + offsets[k][:, None]``
    of ``n`` voxels: :func:`_paint` of those points, evaluating each layer only in the voxels
    whose sub-samples may straddle it.

    ``bounds``: per layer, (maybe inside, maybe outside) of each whole voxel. Where a voxel
    straddles a layer, the bounds are taken again over the box holding its sub-samples only
    (``samples_half_extent``: its half-edges), with the ``_BLOCK_SLACK`` margin; sub-samples
    are painted one by one only where that box too straddles the layer. A box that decides
    does so for every point in it by a margin far above float32 rounding, so the result equals
    painting every sub-sample with every layer.
    """
    # a voxel's sub-samples share one code (``base``) until a layer splits them (``codes``,
    # one column per voxel: long inner loops for numpy)
    n = centres[0].size
    base = np.zeros(n, dtype=np.uint8)
    split = np.zeros(n, dtype=bool)
    codes = np.zeros((offsets.shape[1], n), dtype=np.uint8)

    def cover(whole: np.ndarray, layer: _Layer) -> None:  # every sub-sample of ``whole`` inside
        if layer.only_over is None:
            base[whole] = layer.tissue
            split[whole] = False
            return
        uniform = whole[~split[whole]]
        base[uniform[base[uniform] == layer.only_over]] = layer.tissue
        cols = whole[split[whole]]
        if cols.size:
            sub = codes[:, cols]
            sub[sub == layer.only_over] = layer.tissue
            codes[:, cols] = sub

    for layer, (maybe_in, maybe_out) in zip(layers, bounds, strict=True):
        cover(np.flatnonzero(maybe_in & ~maybe_out), layer)
        part = np.flatnonzero(maybe_in & maybe_out)
        if not part.size:
            continue
        ((box_in, box_out),) = _layer_bounds(
            (layer,), _Squares(tuple(c[part] for c in centres)),  # type: ignore[arg-type]
            samples_half_extent, slack=_BLOCK_SLACK)
        cover(part[box_in & ~box_out], layer)
        part = part[box_in & box_out]                   # straddles: look at each sub-sample
        if not part.size:
            continue
        points = tuple(c[part][None, :] + offsets[k][:, None] for k, c in enumerate(centres))
        mask = _layer_mask(layer, _Squares(points))  # type: ignore[arg-type]
        sub = np.where(split[part][None, :], codes[:, part], base[part][None, :])
        if layer.only_over is not None:
            mask &= sub == layer.only_over
        sub[mask] = layer.tissue
        codes[:, part] = sub
        split[part] = True
    return np.where(split[None, :], codes, base[None, :])


def _render_layers(
    layers: tuple[_Layer, ...], intensity: np.ndarray, pose: _Pose, spec: SaxSpec,
    crop: tuple[slice, slice], n_inplane: int, origin: np.ndarray, frame: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render layered anatomy into the crop's voxels with partial volume.

    Every voxel is first evaluated at its centre (on the slice's centre plane); voxels that
    may straddle a surface are then averaged over ``n_inplane**2 x through_plane_samples``
    sub-samples spread over the pixel and the slice thickness (a box slice profile).
    Each level evaluates a layer only where the level above may straddle it (blocks of
    voxels -> voxel centres -> sub-samples; see :func:`_voxel_layers`, :func:`_paint_samples`),
    with the same result as :func:`_paint` at every centre and sub-sample, ~10x fewer points.
    Slices are processed a few at a time so temporaries stay small.

    Returns:
        ``tissue`` (nx, ny, Z) uint8 at the voxel centres, ``frac`` (nx, ny, Z) float32 the
        fraction of the voxel covered by any layer, ``value`` (nx, ny, Z) float32 the mean
        intensity with uncovered parts counted as 0.
    """
    xs, ys = crop
    dx, sp = spec.pixel_mm, spec.slice_spacing_mm
    m = frame.T @ pose.rotation                 # stack mm -> frame (columns: stack axes)
    o = frame.T @ (pose.affine[:3, 3] - origin)
    nx, ny, nz = xs.stop - xs.start, ys.stop - ys.start, pose.shape[2]
    if nx <= 0 or ny <= 0:  # an empty crop (heart outside the field of view)
        nx, ny = max(nx, 0), max(ny, 0)
        return (np.zeros((nx, ny, nz), dtype=np.uint8), np.zeros((nx, ny, nz), dtype=np.float32),
                np.zeros((nx, ny, nz), dtype=np.float32))
    # voxels are evaluated block by block (B x B voxels of one slice), the crop padded to
    # whole blocks; a block's centre may fall between voxels
    b = BLOCK_VOXELS
    nbx, nby = -(-nx // b), -(-ny // b)
    vx = np.arange(xs.start, xs.start + nbx * b) * dx
    vy = np.arange(ys.start, ys.start + nby * b) * dx
    plane = [(m[k, 0] * vx[:, None] + m[k, 1] * vy[None, :] + o[k]).astype(np.float32)
             .reshape(nbx, b, nby, b).transpose(0, 2, 1, 3).ravel()
             for k in range(3)]                                       # (nbx * nby * b * b,)
    bx = (np.arange(xs.start, xs.start + nbx * b, b) + (b - 1) / 2) * dx
    by = (np.arange(ys.start, ys.start + nby * b, b) + (b - 1) / 2) * dx
    block_plane = [(m[k, 0] * bx[:, None] + m[k, 1] * by[None, :] + o[k]).ravel()
                   for k in range(3)]                                 # (nbx * nby,)
    half_extent = (m * np.array([dx / 2, dx / 2, spec.slice_thickness_mm / 2])[None, :]).T
    block_half_extent = (m * np.array([b * dx / 2, b * dx / 2,
                                       spec.slice_thickness_mm / 2])[None, :]).T
    sub_xy = _sample_offsets(n_inplane) * dx
    sub_z = _sample_offsets(spec.through_plane_samples) * spec.slice_thickness_mm
    samples_half_extent = (m * np.array([sub_xy.max(), sub_xy.max(), sub_z.max()])[None, :]).T
    sub = np.stack([g.reshape(-1) for g in np.meshgrid(sub_xy, sub_xy, sub_z, indexing="ij")])
    offsets = (m @ sub).astype(np.float32)                                     # (3, S)

    tissue = np.empty((nz, nx, ny), dtype=np.uint8)
    frac = np.empty((nz, nx, ny), dtype=np.float32)
    value = np.empty((nz, nx, ny), dtype=np.float32)
    step = max(1, CHUNK_POINTS // max(1, plane[0].size))
    for z0 in range(0, nz, step):
        zs = np.arange(z0, min(nz, z0 + step))
        centre = tuple((plane[k][None] + np.float32(m[k, 2] * sp)
                        * zs[:, None].astype(np.float32)).ravel() for k in range(3))
        block_centre = tuple((block_plane[k][None] + m[k, 2] * sp * zs[:, None]).ravel()
                             for k in range(3))
        layered = _voxel_layers(layers, centre, block_centre, half_extent, block_half_extent)
        t = np.zeros(centre[0].shape, dtype=np.uint8)  # as _paint: later layers win
        for layer, (inside, _, _) in zip(layers, layered, strict=True):
            if layer.only_over is not None:
                inside = inside & (t == layer.only_over)
            t[inside] = layer.tissue
        v, f = intensity[t], (t != 0).astype(np.float32)
        if offsets.shape[1] > 1:
            near = functools.reduce(np.logical_or, (i & o for _, i, o in layered))
            idx = np.flatnonzero(near)
            if idx.size:
                ft = _paint_samples(layers, tuple(c[idx] for c in centre), offsets,
                                    [(i[idx], o[idx]) for _, i, o in layered],
                                    samples_half_extent)
                v[idx] = intensity[ft].mean(axis=0)
                f[idx] = np.count_nonzero(ft, axis=0) / np.float32(ft.shape[0])
        for out, flat in ((tissue, t), (frac, f), (value, v)):  # blocks -> (z, x, y), uncropped
            out[zs] = (flat.reshape(len(zs), nbx, nby, b, b).transpose(0, 1, 3, 2, 4)
                       .reshape(len(zs), nbx * b, nby * b)[:, :nx, :ny])
    return (tissue.transpose(1, 2, 0), frac.transpose(1, 2, 0), value.transpose(1, 2, 0))


def _render_heart(
    heart: _Heart, heart_origin: np.ndarray, pose: _Pose, spec: SaxSpec, intensity: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The heart at ED and at ES: ``(tissue, frac, value)`` per phase.

    ``tissue`` is the full-size ``(X, Y, Z)`` heart tissue code (H_*) at the voxel centres;
    ``frac`` and ``value`` cover the crop's voxels: the final voxel is
    ``value + (1 - frac) * background``.
    """
    crop = pose.crop[:2]
    out = []
    for ph in (heart.ed, heart.es):
        tissue, frac, value = _render_layers(_heart_layers(ph, heart), intensity, pose, spec,
                                             crop, spec.supersample, heart_origin, heart.frame)
        full = np.zeros(pose.shape, dtype=np.uint8)
        full[crop] = tissue
        out.append((full, frac, value))
    return out


def _render_body(body: _Body, pose: _Pose, spec: SaxSpec,
                 intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chest tissue code (B_*) at the voxel centres and intensity (partial volume through the
    slice only), both (X, Y, Z)."""
    crop = (slice(0, pose.shape[0]), slice(0, pose.shape[1]))
    tissue, _, value = _render_layers(_body_layers(body), intensity, pose, spec, crop, 1,
                                      body.origin, np.eye(3))
    return tissue, value


# ============================================================================================
# Texture, bias field, noise
# ============================================================================================


def _smooth_texture(shape: tuple[int, int, int], spec: SaxSpec,
                    rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) float32 multiplicative texture 1 + s * T, T smooth, unit sd, correlated
    between neighbouring slices (low-order cosine basis with AR(1) coefficients)."""
    nx, ny, nz = shape
    k = 6
    decay = 1.0 / (1.0 + np.add.outer(np.arange(k) ** 2, np.arange(k) ** 2))  # (k, k)
    coef = np.empty((k, k, nz))
    coef[..., 0] = rng.standard_normal((k, k))
    for z in range(1, nz):  # neighbouring slices look alike
        coef[..., z] = 0.7 * coef[..., z - 1] + math.sqrt(1 - 0.49) * rng.standard_normal((k, k))
    coef *= decay[..., None]
    coef[0, 0] = 0.0
    bx = np.cos(np.pi * np.outer((np.arange(nx) + 0.5) / nx, np.arange(k)))  # (nx, k)
    by = np.cos(np.pi * np.outer((np.arange(ny) + 0.5) / ny, np.arange(k)))  # (ny, k)
    field = np.einsum("xp,pqz->xqz", bx, coef)       # two small contractions, not one big one
    field = np.einsum("xqz,yq->xyz", field, by)
    field /= field.std() + 1e-12
    return (1.0 + spec.texture_strength * field).astype(np.float32)


def _bias_field(shape: tuple[int, int, int], spec: SaxSpec, rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) float32 smooth coil-like shading: exp of a random low-order polynomial,
    scaled so its largest |log amplitude| is ``bias_field_strength``."""
    nx, ny, nz = shape
    x = np.linspace(-1.0, 1.0, nx)[:, None, None]
    y = np.linspace(-1.0, 1.0, ny)[None, :, None]
    z = np.linspace(-1.0, 1.0, nz)[None, None, :]
    c = rng.standard_normal(6)
    poly = c[0] * x + c[1] * y + c[2] * x * x + c[3] * y * y + c[4] * x * y + 0.3 * c[5] * z
    poly = poly - poly.mean()
    poly *= spec.bias_field_strength / (np.abs(poly).max() + 1e-12)
    return np.exp(poly).astype(np.float32)


def _rician(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the clean signal plus complex white Gaussian noise of sd ``sigma``."""
    if sigma == 0:
        return clean
    noise = rng.standard_normal((2, *clean.shape), dtype=np.float32) * np.float32(sigma)
    real = clean + noise[0]
    return np.sqrt(real * real + noise[1] * noise[1])
