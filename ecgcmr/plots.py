"""Figure helpers for the notebooks: ECG paper, CMR montages, phenotype distributions, QC.

Every function takes plain arrays or DataFrames, does no file I/O (except :func:`save_figure`)
and returns a :class:`matplotlib.figure.Figure`. Figures are built with ``Figure(...)`` rather
than ``pyplot``, so they hold no global state: nothing is shown by side effect, nothing has to
be closed, and a notebook displays a figure by ending a cell with it (or ``display(fig)``).

Conventions used throughout:

- ECG arrays are ``(12, T)`` in mV, leads in :data:`ecgcmr.constants.LEADS` order.
- CMR volumes are NIfTI voxel order ``(X, Y, Z)``; by default ``Z`` (axis 2) is the
  short-axis slice index. A slice ``image[:, :, k]`` is drawn with ``x`` (voxel axis 0) to the
  right and ``y`` (voxel axis 1) upwards (``imshow(slice.T, origin="lower")``), i.e. in voxel
  coordinates, not re-oriented to a radiological view.
- Label maps use :data:`ecgcmr.constants.LABEL_LV_BLOOD`, ``LABEL_LV_MYO``, ``LABEL_RV_BLOOD``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, MultipleLocator, NullFormatter

from ecgcmr.constants import (
    ECG_FS_HZ,
    LABEL_LV_BLOOD,
    LABEL_LV_MYO,
    LABEL_RV_BLOOD,
    LEADS,
    PHENOTYPES,
)
from ecgcmr.errors import DataError

__all__ = [
    "plot_ecg_cmr_pairs",
    "ECG_LAYOUT",
    "plot_cmr_montage",
    "plot_ecg_12lead",
    "plot_ed_es",
    "plot_phenotype_distributions",
    "plot_qc_summary",
    "save_figure",
]

MM_PER_INCH: float = 25.4

# --- ECG paper -------------------------------------------------------------------------------
# Standard 12-lead recording: paper speed 25 mm/s, gain 10 mm/mV, 1 mm minor squares
# (0.04 s, 0.1 mV), 5 mm major squares (0.2 s, 0.5 mV) and a 1 mV calibration pulse 10 mm tall
# and 0.2 s wide (Kligfield et al., 2007, Circulation 115:1306, AHA/ACCF/HRS recommendations
# part I; Romano, 2015, "The Normal Electrocardiogram", Springer, ch. 3).
ECG_PAPER_SPEED_MM_PER_S: float = 25.0
ECG_GAIN_MM_PER_MV: float = 10.0
ECG_MINOR_GRID_MM: float = 1.0
ECG_MAJOR_GRID_MM: float = 5.0
ECG_CALIBRATION_MV: float = 1.0
ECG_CALIBRATION_S: float = 0.2

#: The paper 3x4 layout: rows of lead names; column c shows the c-th quarter of the strip.
ECG_LAYOUT: tuple[tuple[str, ...], ...] = (
    ("I", "aVR", "V1", "V4"),
    ("II", "aVL", "V2", "V5"),
    ("III", "aVF", "V3", "V6"),
)
_ECG_ROW_PITCH_MM = 40.0     # baseline-to-baseline distance (4 mV); a multiple of 5 mm so
                             # every baseline lies on a major grid line
_ECG_CAL_ZONE_MM = 15.0      # room left of the strip for the calibration pulse
_ECG_RIGHT_PAD_MM = 5.0
_ECG_PAPER_MINOR = "#f7c9c9"  # pink, as printed ECG paper
_ECG_PAPER_MAJOR = "#e58f8f"
_ECG_TRACE = "black"

# --- CMR -------------------------------------------------------------------------------------
#: Contour colour and legend name per label value (Okabe-Ito colours: colour-blind safe).
#: Drawing order matters: the myocardium contour also traces the endocardium, so the blood
#: pools are drawn after it and stay visible where the borders coincide.
CMR_LABEL_STYLES: Mapping[int, tuple[str, str]] = {
    LABEL_LV_MYO: ("LV myocardium", "#009E73"),
    LABEL_RV_BLOOD: ("RV blood pool", "#56B4E9"),
    LABEL_LV_BLOOD: ("LV blood pool", "#D55E00"),
}
_CMR_WINDOW_PERCENTILES = (1.0, 99.0)  # robust grey window: ignores a few hot voxels
_CMR_PANEL_INCH = 2.0

# --- Phenotypes ------------------------------------------------------------------------------
_PHENOTYPE_NAMES: Mapping[str, str] = {
    "lvedv_ml": "LVEDV", "lvesv_ml": "LVESV", "lvsv_ml": "LVSV", "lvef_pct": "LVEF",
    "lvm_g": "LV mass", "rvedv_ml": "RVEDV", "rvesv_ml": "RVESV", "rvsv_ml": "RVSV",
    "rvef_pct": "RVEF",
}
_UNIT_SUFFIXES: Mapping[str, str] = {"_ml": "mL", "_pct": "%", "_g": "g", "_mmhg": "mmHg",
                                     "_years": "years", "_ms": "ms", "_bpm": "bpm"}
#: Sex coding of UK Biobank field 31 (see ecgcmr.constants.COVARIATES).
SEX_NAMES: Mapping[int, str] = {0: "female", 1: "male"}
SEX_COLOURS: Mapping[int, str] = {0: "#CC79A7", 1: "#0072B2"}
_GROUP_COLOURS = ("#0072B2", "#CC79A7", "#009E73", "#E69F00", "#56B4E9", "#D55E00")
_HIST_BINS = 30
_KDE_POINTS = 200
_REFERENCE_N_SD = 2.0  # reference interval drawn as mean +- 2 SD (~95 % of a normal cohort)

_QC_COLUMNS = ("subject_id", "modality", "file", "reason")


# ============================================================================================
# ECG
# ============================================================================================
def _check_ecg(ecg: np.ndarray, fs: float) -> np.ndarray:
    """Validate a ``(12, T)`` mV array and return it as float64."""
    arr = np.asarray(ecg, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != len(LEADS) or arr.shape[1] < 4:
        raise DataError(
            "ECG array has the wrong shape",
            expected=f"(12, T) mV with T >= 4, leads in order {', '.join(LEADS)}",
            found=str(tuple(arr.shape)),
        )
    if not fs > 0:
        raise DataError("sampling rate must be positive", expected="fs > 0 Hz", found=str(fs))
    return arr


def _draw_ecg_paper(ax: Axes, x_lim: tuple[float, float], y_lim: tuple[float, float]) -> None:
    """Pink ECG grid in mm coordinates: 1 mm minor and 5 mm major lines, no tick labels."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MultipleLocator(ECG_MAJOR_GRID_MM))
        axis.set_minor_locator(MultipleLocator(ECG_MINOR_GRID_MM))
        axis.set_major_formatter(NullFormatter())
    ax.tick_params(which="both", length=0)
    ax.grid(which="minor", color=_ECG_PAPER_MINOR, linewidth=0.4)
    ax.grid(which="major", color=_ECG_PAPER_MAJOR, linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_xlim(*x_lim)
    ax.set_ylim(*y_lim)
    ax.set_aspect("equal")  # 1 mm of time == 1 mm of voltage on the page
    for spine in ax.spines.values():
        spine.set_color(_ECG_PAPER_MAJOR)


def _calibration_pulse(x0_mm: float, baseline_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of a 1 mV x 0.2 s square pulse starting at ``x0_mm`` (mm, mm)."""
    width = ECG_CALIBRATION_S * ECG_PAPER_SPEED_MM_PER_S  # 5 mm
    height = ECG_CALIBRATION_MV * ECG_GAIN_MM_PER_MV      # 10 mm
    lead_in = 2.0
    xs = np.array([0, lead_in, lead_in, lead_in + width, lead_in + width, 2 * lead_in + width])
    ys = np.array([0, 0, height, height, 0, 0])
    return x0_mm + xs, baseline_mm + ys


def plot_ecg_12lead(
    ecg: np.ndarray,
    fs: float = ECG_FS_HZ,
    *,
    title: str | None = None,
    rhythm_lead: str = "II",
) -> Figure:
    """A 12-lead ECG in the clinical paper layout, true to scale.

    Layout: a 3x4 grid (rows ``I/aVR/V1/V4``, ``II/aVL/V2/V5``, ``III/aVF/V3/V6``); column
    ``c`` shows its own quarter of the strip (2.5 s of a 10 s record: column 0 is 0-2.5 s,
    column 1 is 2.5-5 s, ...), as an electrocardiograph prints them. Underneath, the full-length
    rhythm strip of ``rhythm_lead``. A 1 mV calibration pulse opens each row.

    The whole sheet is one axes in millimetres of paper: time at 25 mm/s, voltage at
    10 mm/mV, pink 1 mm minor / 5 mm major grid. The figure size is chosen so that the axes is
    exactly that many millimetres: printed at 100 % the paper is true to scale.

    Args:
        ecg: ``(12, T)`` in mV, leads in :data:`ecgcmr.constants.LEADS` order
            (I, II, III, aVR, aVL, aVF, V1..V6). NaNs are drawn as gaps.
        fs: sampling rate in Hz.
        title: text above the sheet (e.g. the subject id).
        rhythm_lead: the lead of the rhythm strip.

    Returns:
        A figure with one axes. Each trace is a ``Line2D`` whose label is the lead name
        (``"rhythm <lead>"`` for the rhythm strip); the calibration pulses are labelled
        ``"calibration"``; the lead names are drawn as text.
    """
    arr = _check_ecg(ecg, fs)
    if rhythm_lead not in LEADS:
        raise DataError("unknown rhythm lead", expected=f"one of {LEADS}", found=rhythm_lead)
    n_samples = arr.shape[1]
    mm_per_sample = ECG_PAPER_SPEED_MM_PER_S / fs
    strip_mm = n_samples * mm_per_sample                        # 250 mm for 10 s
    n_cols = len(ECG_LAYOUT[0])
    n_seg = n_samples // n_cols                                 # samples per column
    n_rows = len(ECG_LAYOUT) + 1                                # + rhythm strip
    # Baselines from the top row down; half a row pitch of room above and below.
    baselines = [(n_rows - 1 - r + 0.5) * _ECG_ROW_PITCH_MM for r in range(n_rows)]
    x_lim = (-_ECG_CAL_ZONE_MM, np.ceil(strip_mm / ECG_MAJOR_GRID_MM) * ECG_MAJOR_GRID_MM
             + _ECG_RIGHT_PAD_MM)
    y_lim = (0.0, n_rows * _ECG_ROW_PITCH_MM)

    # Figure = paper (exact mm) + margins (inches) for the title and the footer.
    width_mm, height_mm = x_lim[1] - x_lim[0], y_lim[1] - y_lim[0]
    left_in, right_in, bottom_in = 0.15, 0.15, 0.3
    top_in = 0.45 if title else 0.15
    ax_w_in, ax_h_in = width_mm / MM_PER_INCH, height_mm / MM_PER_INCH
    fig_w, fig_h = ax_w_in + left_in + right_in, ax_h_in + bottom_in + top_in
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((left_in / fig_w, bottom_in / fig_h, ax_w_in / fig_w, ax_h_in / fig_h))
    _draw_ecg_paper(ax, x_lim, y_lim)

    label_dy = 0.3 * _ECG_ROW_PITCH_MM  # lead name sits above the baseline, left of the trace
    sample_x = np.arange(n_samples) * mm_per_sample
    for r, row in enumerate(ECG_LAYOUT):
        base = baselines[r]
        for c, lead in enumerate(row):
            sl = slice(c * n_seg, (c + 1) * n_seg)
            ax.plot(sample_x[sl], base + ECG_GAIN_MM_PER_MV * arr[LEADS.index(lead), sl],
                    color=_ECG_TRACE, linewidth=0.7, label=lead)
            ax.text(sample_x[sl][0] + 1.5, base + label_dy, lead, fontsize=9,
                    fontweight="bold", va="bottom")
        # Short vertical marks where the printed lead changes (as on a paper ECG).
        marks = [[(c * n_seg * mm_per_sample, base - 3.0), (c * n_seg * mm_per_sample, base + 3.0)]
                 for c in range(1, n_cols)]
        ax.add_collection(LineCollection(marks, colors=_ECG_TRACE, linewidths=1.0))

    base = baselines[-1]
    ax.plot(sample_x, base + ECG_GAIN_MM_PER_MV * arr[LEADS.index(rhythm_lead)],
            color=_ECG_TRACE, linewidth=0.7, label=f"rhythm {rhythm_lead}")
    ax.text(1.5, base + label_dy, rhythm_lead, fontsize=9, fontweight="bold", va="bottom")

    for base in baselines:
        xs, ys = _calibration_pulse(-_ECG_CAL_ZONE_MM + 2.0, base)
        ax.plot(xs, ys, color=_ECG_TRACE, linewidth=1.0, label="calibration")

    fig.text(left_in / fig_w, 0.1 / fig_h,
             f"{ECG_PAPER_SPEED_MM_PER_S:g} mm/s   {ECG_GAIN_MM_PER_MV:g} mm/mV   "
             f"{fs:g} Hz   {n_samples / fs:g} s", fontsize=8, va="bottom")
    if title:
        fig.text(left_in / fig_w, 1 - 0.1 / fig_h, title, fontsize=11, va="top")
    return fig


# ============================================================================================
# CMR
# ============================================================================================
def _check_volume(image: np.ndarray, name: str, slice_axis: int) -> np.ndarray:
    """Validate a 3D volume and move the slice axis last: ``(X, Y, Z)``."""
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise DataError(f"{name} must be a 3D volume", expected="(X, Y, Z) array",
                        found=f"shape {arr.shape}")
    if slice_axis not in (-3, -2, -1, 0, 1, 2):
        raise DataError("slice_axis must index a 3D array", expected="0, 1 or 2",
                        found=str(slice_axis))
    return np.moveaxis(arr, slice_axis, -1)


def _check_labels(labels: np.ndarray | None, shape: tuple[int, ...], name: str,
                  slice_axis: int) -> np.ndarray | None:
    if labels is None:
        return None
    lab = _check_volume(labels, name, slice_axis)
    if lab.shape != shape:
        raise DataError(f"{name} does not match its image", expected=f"shape {shape}",
                        found=f"shape {lab.shape}")
    return np.rint(lab).astype(np.int16)


def _grey_window(*volumes: np.ndarray) -> tuple[float, float]:
    """Shared robust (1st, 99th percentile) grey window over the finite voxels of volumes."""
    finite = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in volumes])
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, _CMR_WINDOW_PERCENTILES)
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _default_slices(n_total: int, labels: np.ndarray | None, n: int) -> list[int]:
    """Up to ``n`` evenly spaced slice indices, over the labelled (heart) range if labels."""
    lo, hi = 0, n_total - 1
    if labels is not None:
        has_heart = np.flatnonzero(np.isin(labels, list(CMR_LABEL_STYLES)).any(axis=(0, 1)))
        if has_heart.size:
            lo, hi = int(has_heart[0]), int(has_heart[-1])
    return sorted({int(k) for k in np.rint(np.linspace(lo, hi, min(n, hi - lo + 1)))})


def _check_slices(slices: Sequence[int], n_total: int) -> list[int]:
    out = [int(k) for k in slices]
    bad = [k for k in out if not 0 <= k < n_total]
    if not out or bad:
        raise DataError("slice indices out of range", expected=f"indices in [0, {n_total})",
                        found=str(bad or "no slices"))
    return out


def _draw_slice(ax: Axes, image_2d: np.ndarray, labels_2d: np.ndarray | None,
                window: tuple[float, float], aspect: float) -> None:
    """Grey slice ``(X, Y)`` with x to the right, y upwards, and one contour per label."""
    ax.imshow(image_2d.T, cmap="gray", origin="lower", vmin=window[0], vmax=window[1],
              aspect=aspect, interpolation="nearest")
    if labels_2d is not None:
        for value, (_, colour) in CMR_LABEL_STYLES.items():
            mask = labels_2d == value
            if mask.any():  # contour() warns on a constant field
                ax.contour(mask.T.astype(np.float32), levels=[0.5], colors=[colour],
                           linewidths=1.0, origin="lower")
    ax.set_xticks([])
    ax.set_yticks([])


def _label_legend(fig: Figure, *label_volumes: np.ndarray | None) -> None:
    """Figure legend for the label values present in any of the volumes."""
    present: set[int] = set()
    for lab in label_volumes:
        if lab is not None:
            present |= {int(v) for v in np.unique(lab)}
    handles = [Line2D([], [], color=colour, linewidth=2, label=name)
               for value, (name, colour) in sorted(CMR_LABEL_STYLES.items()) if value in present]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                   frameon=False, fontsize=9)


def _pixel_aspect(spacing: tuple[float, float] | None) -> float:
    """imshow aspect for in-plane spacing ``(dx, dy)`` mm (slice drawn as ``(Y, X)``)."""
    if spacing is None:
        return 1.0
    dx, dy = (float(s) for s in spacing)
    if not (dx > 0 and dy > 0):
        raise DataError("pixel spacing must be positive", expected="(dx, dy) mm > 0",
                        found=str(spacing))
    return dy / dx


def plot_cmr_montage(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    slices: Sequence[int] | None = None,
    title: str | None = None,
    slice_axis: int = 2,
    max_slices: int = 12,
    ncols: int | None = None,
    spacing: tuple[float, float] | None = None,
) -> Figure:
    """A montage of short-axis slices with label contours.

    Args:
        image: 3D volume, NIfTI voxel order ``(X, Y, Z)`` with the slice index on
            ``slice_axis`` (default 2, i.e. ``Z``). Any intensity unit; shown in grey with a
            robust 1st-99th percentile window shared by all slices.
        labels: optional label map of the same shape; contours of ``LABEL_LV_BLOOD``,
            ``LABEL_LV_MYO`` and ``LABEL_RV_BLOOD`` in distinct colours, with a legend.
        slices: slice indices along ``slice_axis`` to show. Default: up to ``max_slices``
            evenly spaced slices over the labelled range (the whole stack without labels).
        title: figure title.
        slice_axis: which axis of ``image`` indexes the slices.
        max_slices: cap on the default number of slices.
        ncols: panels per row (default: up to 6).
        spacing: in-plane voxel spacing ``(dx, dy)`` in mm, for the pixel aspect ratio.

    Returns:
        A figure with exactly one axes per shown slice, titled ``"slice k"``; each shows
        ``image[:, :, k]`` transposed (x right, y up).
    """
    img = _check_volume(image, "image", slice_axis)
    lab = _check_labels(labels, img.shape, "labels", slice_axis)
    n_total = img.shape[-1]
    chosen = (_default_slices(n_total, lab, max_slices) if slices is None
              else _check_slices(slices, n_total))
    n = len(chosen)
    ncols = min(n, ncols or 6)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(_CMR_PANEL_INCH * ncols, _CMR_PANEL_INCH * nrows + 0.7),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    window = _grey_window(img)
    aspect = _pixel_aspect(spacing)
    for ax, k in zip(axes, chosen, strict=False):
        _draw_slice(ax, img[:, :, k], None if lab is None else lab[:, :, k], window, aspect)
        ax.set_title(f"slice {k}", fontsize=9)
    for ax in axes[n:]:
        ax.remove()  # so the figure holds exactly one axes per slice
    _label_legend(fig, lab)
    if title:
        fig.suptitle(title)
    return fig


def plot_ed_es(
    image_ed: np.ndarray,
    image_es: np.ndarray,
    labels_ed: np.ndarray | None = None,
    labels_es: np.ndarray | None = None,
    n_slices: int = 4,
    *,
    slices: Sequence[int] | None = None,
    title: str | None = None,
    slice_axis: int = 2,
    spacing: tuple[float, float] | None = None,
) -> Figure:
    """End-diastole over end-systole, the same slices side by side, to show contraction.

    Args:
        image_ed, image_es: ``(X, Y, Z)`` volumes (slice index on ``slice_axis``) with the
            same number of slices; one grey window shared by both phases so brightness is
            comparable.
        labels_ed, labels_es: optional label maps matching their images.
        n_slices: how many slices when ``slices`` is not given: evenly spaced over the
            ED labelled range (the larger heart), else over the stack.
        slices: explicit slice indices (overrides ``n_slices``).
        title, slice_axis, spacing: as in :func:`plot_cmr_montage`.

    Returns:
        A figure with ``2 * n`` axes: row 0 ED, row 1 ES, column j the same slice index.
    """
    ed = _check_volume(image_ed, "image_ed", slice_axis)
    es = _check_volume(image_es, "image_es", slice_axis)
    if ed.shape[-1] != es.shape[-1]:
        raise DataError("ED and ES stacks have different numbers of slices",
                        expected=f"{ed.shape[-1]} slices in both", found=f"{es.shape[-1]}")
    lab_ed = _check_labels(labels_ed, ed.shape, "labels_ed", slice_axis)
    lab_es = _check_labels(labels_es, es.shape, "labels_es", slice_axis)
    n_total = ed.shape[-1]
    if slices is None:
        chosen = _default_slices(n_total, lab_ed if lab_ed is not None else lab_es, n_slices)
    else:
        chosen = _check_slices(slices, n_total)
    n = len(chosen)
    fig = Figure(figsize=(_CMR_PANEL_INCH * n + 0.4, 2 * _CMR_PANEL_INCH + 0.7),
                 layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    window = _grey_window(ed, es)
    aspect = _pixel_aspect(spacing)
    for row, (name, img, lab) in enumerate((("ED", ed, lab_ed), ("ES", es, lab_es))):
        for j, k in enumerate(chosen):
            ax = axes[row, j]
            _draw_slice(ax, img[:, :, k], None if lab is None else lab[:, :, k], window,
                        aspect)
            if row == 0:
                ax.set_title(f"slice {k}", fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=11, fontweight="bold")
    _label_legend(fig, lab_ed, lab_es)
    if title:
        fig.suptitle(title)
    return fig


def plot_ecg_cmr_pairs(examples: Sequence[Mapping[str, object]], *,
                       leads: Sequence[str] = ("I", "II", "V5"), fs: float = ECG_FS_HZ,
                       title: str | None = None) -> Figure:
    """One row per subject: a few ECG leads beside a mid-ventricular ED and ES slice.

    Each example maps ``subject_id``; ``ecg`` ``(12, T)`` mV in ``LEADS`` order; ``ed`` and
    ``es`` ``(D, H, W)`` volumes in the canonical layout (slices first); optional
    ``ed_labels`` / ``es_labels`` of the same shapes (contours); optional ``caption``
    (e.g. the phenotypes). The slice shown is the middle of the ED labelled range (else of
    the stack), the same index for both phases, so the contraction is visible.
    """
    if not examples:
        raise DataError("no examples to plot", expected="at least one subject")
    unknown = [lead for lead in leads if lead not in LEADS]
    if unknown:
        raise DataError(f"unknown lead {unknown[0]!r}", expected=", ".join(LEADS))
    rows = len(examples)
    fig = Figure(figsize=(11, 2.3 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False, width_ratios=[3.4, 1, 1])
    for r, ex in enumerate(examples):
        ecg = _check_ecg(np.asarray(ex["ecg"]), fs)
        t = np.arange(ecg.shape[1]) / fs
        ax = axes[r, 0]
        shown = ecg[[LEADS.index(lead) for lead in leads]]
        step = max(1.5, 1.1 * float(np.ptp(shown, axis=1).max()))   # traces never overlap
        for j, lead in enumerate(leads):
            offset = -step * j
            ax.plot(t, ecg[LEADS.index(lead)] + offset, color="black", linewidth=0.6)
            ax.text(-0.1, offset, lead, ha="right", va="center", fontsize=9)
        ax.set_xlim(-0.5, t[-1])
        ax.set_yticks([])
        ax.set_xlabel("time (s)" if r == rows - 1 else "")
        ax.set_title(f"{ex['subject_id']}  {ex.get('caption', '')}", loc="left", fontsize=9)
        ed = _check_volume(np.asarray(ex["ed"]), "ed", 0)
        es = _check_volume(np.asarray(ex["es"]), "es", 0)
        lab_ed = _check_labels(ex.get("ed_labels"), ed.shape, "ed_labels", 0)
        lab_es = _check_labels(ex.get("es_labels"), es.shape, "es_labels", 0)
        middle = _default_slices(ed.shape[-1], lab_ed, 3)
        k = middle[len(middle) // 2]
        window = _grey_window(ed, es)
        for c, (name, img, lab) in enumerate((("ED", ed, lab_ed), ("ES", es, lab_es)), start=1):
            _draw_slice(axes[r, c], img[:, :, min(k, img.shape[-1] - 1)],
                        None if lab is None else lab[:, :, min(k, lab.shape[-1] - 1)],
                        window, 1.0)
            if r == 0:
                axes[r, c].set_title(f"{name}, slice {k}", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


# ============================================================================================
# Phenotypes
# ============================================================================================
def phenotype_label(name: str) -> str:
    """Axis label for a phenotype column, e.g. ``"lvedv_ml"`` -> ``"LVEDV (mL)"``."""
    unit = next((u for suffix, u in _UNIT_SUFFIXES.items() if name.endswith(suffix)), None)
    base = _PHENOTYPE_NAMES.get(name, name)
    return f"{base} ({unit})" if unit else base


def _group_name(by: str | None, value: object) -> str:
    if by == "sex":
        try:
            return SEX_NAMES.get(int(value), str(value))  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return str(value)
    return "all" if by is None else f"{by}={value}"


def _group_colour(by: str | None, value: object, index: int) -> str:
    if by == "sex":
        try:
            return SEX_COLOURS.get(int(value), _GROUP_COLOURS[index % len(_GROUP_COLOURS)])  # type: ignore[call-overload]
        except (TypeError, ValueError):
            pass
    return _GROUP_COLOURS[index % len(_GROUP_COLOURS)]


def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Gaussian KDE (Scott's bandwidth) on ``grid``; None when it is undefined."""
    if values.size < 3 or np.ptp(values) == 0:
        return None
    from scipy.stats import gaussian_kde  # local: scipy is only needed here

    return gaussian_kde(values)(grid)


def _reference_rows(reference: pd.DataFrame) -> pd.DataFrame:
    missing = {"phenotype", "sex", "mean", "sd"} - set(reference.columns)
    if missing:
        raise DataError("reference table is missing columns",
                        expected="phenotype, sex, mean, sd, source",
                        found=f"missing {sorted(missing)}")
    # One row per (phenotype, sex): the first listed wins, so the caller orders by preference.
    return reference.drop_duplicates(subset=["phenotype", "sex"], keep="first")


def plot_phenotype_distributions(
    df: pd.DataFrame,
    reference: pd.DataFrame | None = None,
    phenotypes: Sequence[str] = PHENOTYPES,
    by: str | None = "sex",
    *,
    ncols: int = 3,
    title: str | None = None,
) -> Figure:
    """One panel per phenotype: the cohort's distribution by group, against reference ranges.

    Each panel shows, per group of ``by`` (sex 0 female, 1 male), a density histogram
    (area 1) and a Gaussian KDE of the non-missing values, and, per sex in ``reference``,
    the reference mean +- 2 SD as a shaded band plus a marker with whiskers at the top of
    the panel. NaNs are dropped per phenotype; a phenotype with no values says so.

    Args:
        df: one row per subject; phenotype columns in their units (mL, %, g) and ``by``.
        reference: columns ``phenotype, sex, mean, sd, source`` (sex 0 female, 1 male), in
            the phenotype's units; the first row per (phenotype, sex) is used. Optional.
        phenotypes: the columns to plot, one panel each.
        by: grouping column (``None``: the whole cohort as one group).
        ncols: panels per row.
        title: figure title.

    Returns:
        A figure with exactly ``len(phenotypes)`` axes. Histograms are ``StepPatch``es with
        ``gid="hist-<group>"``; reference bands have ``gid="reference-<sex name>"``.
    """
    phenotypes = list(phenotypes)
    if not phenotypes:
        raise DataError("no phenotypes to plot", expected="at least one phenotype column")
    missing = [p for p in phenotypes if p not in df.columns]
    if by is not None and by not in df.columns:
        missing.append(by)
    if missing:
        raise DataError("phenotype frame is missing columns", expected=", ".join(phenotypes),
                        found=f"missing {missing}")
    ref = None if reference is None else _reference_rows(reference)
    groups = [None] if by is None else sorted(pd.unique(df[by].dropna()))

    ncols = max(1, min(ncols, len(phenotypes)))
    nrows = -(-len(phenotypes) // ncols)
    fig = Figure(figsize=(3.3 * ncols, 2.5 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(phenotypes):]:
        ax.remove()
    legend_handles: dict[str, object] = {}
    for ax, pheno in zip(axes, phenotypes, strict=False):
        _phenotype_panel(ax, df, pheno, by, groups, ref, legend_handles)
    if legend_handles:
        fig.legend(handles=list(legend_handles.values()), loc="outside lower center",
                   ncols=min(len(legend_handles), 4), frameon=False, fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def _phenotype_panel(ax: Axes, df: pd.DataFrame, pheno: str, by: str | None, groups: list,
                     ref: pd.DataFrame | None, legend_handles: dict[str, object]) -> None:
    """Histograms + KDE per group and reference bands for one phenotype."""
    values = pd.to_numeric(df[pheno], errors="coerce").to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    ref_rows = (pd.DataFrame(columns=["phenotype", "sex", "mean", "sd"]) if ref is None
                else ref[ref["phenotype"] == pheno])
    # A reference row without a mean or SD cannot be drawn; skip it rather than fail.
    ref_rows = ref_rows[np.isfinite(pd.to_numeric(ref_rows["mean"], errors="coerce"))
                        & np.isfinite(pd.to_numeric(ref_rows["sd"], errors="coerce"))]
    ax.set_xlabel(phenotype_label(pheno), fontsize=9)
    ax.tick_params(labelsize=8)
    ax.set_yticks([])
    if finite.size == 0 and ref_rows.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        return
    # Shared bins over data and reference intervals, so every group is on the same x grid.
    lo_parts = [finite.min()] if finite.size else []
    hi_parts = [finite.max()] if finite.size else []
    for row in ref_rows.itertuples():
        lo_parts.append(row.mean - _REFERENCE_N_SD * row.sd)
        hi_parts.append(row.mean + _REFERENCE_N_SD * row.sd)
    lo, hi = float(np.nanmin(lo_parts)), float(np.nanmax(hi_parts))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, _HIST_BINS + 1)
    grid = np.linspace(lo, hi, _KDE_POINTS)

    counts = []
    for i, g in enumerate(groups):
        sel = np.ones(len(df), bool) if g is None else (df[by] == g).to_numpy()
        v = values[sel]
        v = v[np.isfinite(v)]
        name, colour = _group_name(by, g), _group_colour(by, g, i)
        counts.append(f"{name} n={v.size}")
        if v.size == 0:
            continue
        density, _ = np.histogram(v, bins=edges, density=True)
        ax.stairs(density, edges, fill=True, alpha=0.35, color=colour, gid=f"hist-{name}")
        kde = _kde(v, grid)
        if kde is not None:
            ax.plot(grid, kde, color=colour, linewidth=1.2)
        legend_handles.setdefault(name, Patch(facecolor=colour, alpha=0.5, label=name))
    if finite.size == 0:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    ax.text(0.98, 0.97, "\n".join(counts), transform=ax.transAxes, ha="right", va="top",
            fontsize=7)

    # Reference: band over the panel plus a marker with +-2 SD whiskers near the top
    # (markers at different heights so overlapping sex bands stay readable).
    for j, row in enumerate(ref_rows.sort_values("sex").itertuples()):
        name = _group_name("sex", row.sex)
        colour = _group_colour("sex", row.sex, j)
        half = _REFERENCE_N_SD * row.sd
        ax.axvspan(row.mean - half, row.mean + half, color=colour, alpha=0.10, linewidth=0,
                   gid=f"reference-{name}")
        y = 0.74 - 0.08 * j  # below the "n=" text in the top-right corner
        ax.errorbar([row.mean], [y], xerr=[[half], [half]], fmt="D", color=colour,
                    markersize=4, capsize=3, linewidth=1.2,
                    transform=ax.get_xaxis_transform())
        legend_handles.setdefault(
            "reference", Line2D([], [], color="0.3", marker="D", markersize=4,
                                label=f"reference mean \u00b1 {_REFERENCE_N_SD:g} SD"))
    ax.set_ylim(bottom=0)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.5)  # head-room for the reference markers


# ============================================================================================
# QC
# ============================================================================================
def plot_qc_summary(qc_df: pd.DataFrame, *, max_reasons: int = 15,
                    title: str | None = None) -> Figure:
    """Horizontal bar chart of rejected records per reason, stacked by modality.

    Args:
        qc_df: one row per rejected record, columns ``subject_id, modality, file, reason``.
            An empty frame (with or without columns) gives a figure saying
            "no records rejected".
        max_reasons: the most frequent reasons get their own bar; the rest are pooled as
            "other (k reasons)".
        title: figure title (default: the total count).

    Returns:
        A figure with one axes. Bars are grouped by modality: one ``BarContainer`` per
        modality, whose bar widths are the number of rows for each reason (``ax.get_yticklabels``).
    """
    if len(qc_df) == 0:
        fig = Figure(figsize=(5, 1.5), layout="constrained")
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no records rejected", ha="center", va="center", fontsize=12,
                transform=ax.transAxes)
        if title:
            fig.suptitle(title)
        return fig
    missing = [c for c in _QC_COLUMNS if c not in qc_df.columns]
    if missing:
        raise DataError("QC frame is missing columns", expected=", ".join(_QC_COLUMNS),
                        found=f"missing {missing}")
    reasons = qc_df["reason"].fillna("(no reason)").astype(str)
    modality = qc_df["modality"].fillna("(unknown)").astype(str)
    order = reasons.value_counts()  # most frequent first
    if len(order) > max_reasons:
        rest = set(order.index[max_reasons - 1:])
        pooled = f"other ({len(rest)} reasons)"
        reasons = reasons.where(~reasons.isin(rest), pooled)
        order = reasons.value_counts()
    table = pd.crosstab(reasons, modality).reindex(index=order.index)
    labels = list(table.index)[::-1]  # most frequent at the top of a horizontal chart

    fig = Figure(figsize=(7, 1.2 + 0.35 * len(labels)), layout="constrained")
    ax = fig.add_subplot()
    left = np.zeros(len(labels))
    for i, mod in enumerate(table.columns):
        widths = table.loc[labels, mod].to_numpy(dtype=float)
        ax.barh(labels, widths, left=left, color=_GROUP_COLOURS[i % len(_GROUP_COLOURS)],
                label=mod)
        left += widths
    for y, total in enumerate(left):
        ax.text(total, y, f" {int(total)}", va="center", fontsize=8)
    ax.set_xlabel("rejected records")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.5 records
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlim(0, left.max() * 1.15)
    ax.legend(title="modality", fontsize=8, title_fontsize=8, frameon=False,
              loc="lower right")
    n_subjects = qc_df["subject_id"].nunique()
    fig.suptitle(title or f"{len(qc_df)} rejected records ({n_subjects} subjects)",
                 fontsize=11)
    return fig


# ============================================================================================
# Saving
# ============================================================================================
def save_figure(fig: Figure, path: str | Path, dpi: int = 150, *,
                pdf: bool = False) -> list[Path]:
    """Write ``fig`` as PNG (and PDF if ``pdf``), creating parent folders, then close it.

    Args:
        fig: the figure.
        path: target file; its suffix is replaced by ``.png`` (and ``.pdf``).
        dpi: resolution of the PNG in dots per inch.
        pdf: also write a vector PDF next to the PNG.

    Returns:
        The paths written, PNG first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    written = [target.with_suffix(".png")]
    fig.savefig(written[0], dpi=dpi, format="png")
    if pdf:
        written.append(target.with_suffix(".pdf"))
        # No creation date: the same figure gives the same bytes (diffable reference figures).
        fig.savefig(written[1], format="pdf", metadata={"CreationDate": None})
    import matplotlib.pyplot as plt  # local: only to release figures pyplot may be tracking

    plt.close(fig)
    return written


def plot_training_curves(curves: Mapping[str, pd.DataFrame], *, title: str | None = None,
                         smooth: int = 10) -> Figure:
    """Loss per step (running mean over ``smooth`` steps) for each named stage.

    ``curves``: stage name -> the stage's ``steps.csv`` as a DataFrame (columns ``step``,
    ``loss``). One panel per stage, since the stages' losses are on different scales.
    """
    names = list(curves)
    fig = Figure(figsize=(4.2 * max(1, len(names)), 3.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        df = curves[name]
        ax.plot(df["step"], df["loss"], color="0.75", lw=0.8, label="per step")
        ax.plot(df["step"], df["loss"].rolling(smooth, min_periods=1).mean(), color="C0",
                lw=1.6, label=f"mean of {smooth}")
        ax.set(title=name, xlabel="step", ylabel="training loss")
        ax.legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_embedding_map(points: np.ndarray, values: np.ndarray, *, label: str,
                       title: str | None = None) -> Figure:
    """A 2-D map of embeddings (e.g. the first two principal components), coloured by a
    phenotype. ``points``: (N, 2); ``values``: (N,), NaN drawn grey."""
    points = np.asarray(points, dtype=float)
    values = np.asarray(values, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2 or len(values) != len(points):
        raise DataError("embedding map needs points (N, 2) and values (N,)",
                        expected="(N, 2) and (N,)", found=f"{points.shape} and {values.shape}")
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.subplots()
    missing = ~np.isfinite(values)
    ax.scatter(*points[missing].T, s=8, color="0.8", label="missing")
    sc = ax.scatter(*points[~missing].T, c=values[~missing], s=10, cmap="viridis")
    fig.colorbar(sc, ax=ax, label=label)
    ax.set(xlabel="component 1", ylabel="component 2", title=title or "")
    return fig


def plot_predicted_vs_measured(y_true: np.ndarray, y_pred: np.ndarray, *, label: str,
                               title: str | None = None) -> Figure:
    """Scatter of predicted against measured values with the identity line (left) and a
    Bland–Altman plot (right): difference against mean, with the bias and the 95 % limits of
    agreement (bias ± 1.96 SD of the differences)."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    keep = np.isfinite(y_true) & np.isfinite(y_pred) if y_true.shape == y_pred.shape else \
        np.zeros(0, dtype=bool)
    if y_true.shape != y_pred.shape or keep.sum() < 2:
        raise DataError("need two equally long arrays with at least 2 finite pairs",
                        expected="y_true and y_pred of equal shape",
                        found=f"{y_true.shape}, {y_pred.shape}, {int(keep.sum())} finite pairs")
    t, p = y_true[keep], y_pred[keep]
    fig = Figure(figsize=(9.0, 4.0), layout="constrained")
    ax_sc, ax_ba = fig.subplots(1, 2)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    ax_sc.scatter(t, p, s=8, alpha=0.6)
    ax_sc.plot([lo, hi], [lo, hi], color="0.3", lw=1, ls="--", label="identity")
    ax_sc.set(xlabel=f"measured {label}", ylabel=f"predicted {label}", title="prediction")
    ax_sc.legend(frameon=False)
    mean, diff = (t + p) / 2, p - t
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    ax_ba.scatter(mean, diff, s=8, alpha=0.6)
    for y, style in ((bias, "-"), (bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")):
        ax_ba.axhline(y, color="0.3", lw=1, ls=style)
    ax_ba.set(xlabel=f"mean of measured and predicted {label}",
              ylabel="predicted − measured", title=f"Bland–Altman: bias {bias:.1f}, "
              f"LoA ±{1.96 * sd:.1f}")
    if title:
        fig.suptitle(title)
    return fig


def plot_kaplan_meier(tables: Mapping[str, pd.DataFrame], *, title: str | None = None,
                      p_value: float | None = None) -> Figure:
    """Kaplan–Meier survival curves, one per group (e.g. predicted-risk quartile).

    ``tables``: group name -> DataFrame with columns ``time`` and ``survival`` (step function).
    """
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, table in tables.items():
        ax.step(table["time"], table["survival"], where="post", label=str(name))
    text = f"log-rank p = {p_value:.2g}" if p_value is not None and np.isfinite(p_value) else None
    ax.set(xlabel="years since imaging", ylabel="event-free probability",
           title=title or "", ylim=(None, 1.005))
    ax.legend(frameon=False, title=text, fontsize=8)
    return fig


def plot_label_efficiency(tidy: pd.DataFrame, *, metric: str = "r2",
                          title: str | None = None) -> Figure:
    """Metric against the fraction of labelled training subjects, one panel per target and
    one line per method (mean over seeds, error bars one SD). ``tidy`` has columns
    ``method, fraction, target, metric, value``."""
    data = tidy[tidy["metric"] == metric]
    targets = list(dict.fromkeys(data["target"]))
    fig = Figure(figsize=(4.0 * max(1, len(targets)), 3.4), layout="constrained")
    axes = fig.subplots(1, max(1, len(targets)), squeeze=False)[0]
    for ax, target in zip(axes, targets, strict=False):
        part = data[data["target"] == target]
        for method, group in part.groupby("method"):
            stats = group.groupby("fraction")["value"].agg(["mean", "std"]).reset_index()
            ax.errorbar(stats["fraction"], stats["mean"], yerr=stats["std"].fillna(0),
                        marker="o", ms=3, capsize=2, label=str(method))
        ax.set(xscale="log", xlabel="fraction of training labels", ylabel=metric,
               title=target)
        ax.legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
