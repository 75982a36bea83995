"""Tests for ecgcmr.plots: figure structure checked against the physical conventions it draws.

Expected values come from the conventions themselves (25 mm/s, 10 mm/mV, 1/5 mm grid, the
paper layout, a density histogram having area 1, ...), never from numbers read off a plot.
"""

from __future__ import annotations

import io
import struct
from collections import Counter

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ecgcmr import plots  # noqa: E402
from ecgcmr.constants import (  # noqa: E402
    LABEL_LV_BLOOD,
    LABEL_LV_MYO,
    LABEL_RV_BLOOD,
    LEADS,
    PHENOTYPES,
)
from ecgcmr.errors import DataError  # noqa: E402

FS = 500
T = 5000  # 10 s


def _render(fig: Figure) -> None:
    """Draw the figure once (layout, contours, legends) so drawing errors surface."""
    fig.savefig(io.BytesIO(), format="png", dpi=30)


# ---------------------------------------------------------------------------------------------
# ECG
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ecg() -> np.ndarray:
    """(12, T) mV: each lead a different sinusoid plus noise, so leads are identifiable."""
    rng = np.random.default_rng(0)
    t = np.arange(T) / FS
    leads = [0.5 * np.sin(2 * np.pi * (1 + i) * t) + 0.1 * i for i in range(12)]
    return np.stack(leads) + 0.01 * rng.standard_normal((12, T))


def _traces(fig: Figure) -> dict[str, list]:
    out: dict[str, list] = {}
    for line in fig.axes[0].get_lines():
        out.setdefault(line.get_label(), []).append(line)
    return out


def test_ecg_grid_has_all_leads_and_one_axes(ecg):
    fig = plots.plot_ecg_12lead(ecg, FS, title="subject 1")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert set(LEADS) <= set(texts)
    assert texts.count("II") == 2  # grid + rhythm strip
    traces = _traces(fig)
    assert all(len(traces[lead]) == 1 for lead in LEADS)
    assert len(traces["rhythm II"]) == 1
    assert len(traces["calibration"]) == 4  # one per row
    _render(fig)


@pytest.mark.parametrize("col", range(4))
def test_ecg_columns_show_their_own_quarter(ecg, col):
    """Column c of the paper layout shows samples [c T/4, (c+1) T/4) at 25 mm/s, 10 mm/mV."""
    layout = (("I", "II", "III"), ("aVR", "aVL", "aVF"), ("V1", "V2", "V3"), ("V4", "V5", "V6"))
    fig = plots.plot_ecg_12lead(ecg, FS)
    traces = _traces(fig)
    quarter = T // 4
    baselines = []
    for lead in layout[col]:
        line = traces[lead][0]
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        seg = ecg[LEADS.index(lead), col * quarter:(col + 1) * quarter]
        assert x.size == quarter
        # 25 mm/s: the column starts at c * 2.5 s * 25 mm/s and advances 25/500 mm a sample.
        assert x[0] == pytest.approx(col * 2.5 * 25.0)
        assert np.diff(x) == pytest.approx(np.full(quarter - 1, 25.0 / FS))
        # 10 mm/mV around a constant baseline.
        offset = y - 10.0 * seg
        assert np.ptp(offset) == pytest.approx(0.0, abs=1e-9)
        baselines.append(offset[0])
    # Rows I/II/III from top to bottom: strictly decreasing baselines.
    assert baselines[0] > baselines[1] > baselines[2]


def test_ecg_rows_match_paper_layout(ecg):
    rows = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
    traces = _traces(plots.plot_ecg_12lead(ecg, FS))
    for row in rows:
        # Each trace's own baseline: y - 10 * (the samples it shows).
        offs = []
        for c, lead in enumerate(row):
            y = np.asarray(traces[lead][0].get_ydata())
            offs.append(y[0] - 10.0 * ecg[LEADS.index(lead), c * (T // 4)])
        assert np.ptp(offs) == pytest.approx(0.0, abs=1e-9)


def test_ecg_rhythm_strip_is_full_length(ecg):
    fig = plots.plot_ecg_12lead(ecg, FS, rhythm_lead="V5")
    line = _traces(fig)["rhythm V5"][0]
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert x[-1] - x[0] == pytest.approx((T - 1) / FS * 25.0)  # ~250 mm for 10 s
    assert np.ptp(y - 10.0 * ecg[LEADS.index("V5")]) == pytest.approx(0.0, abs=1e-9)


def test_ecg_calibration_pulse_and_paper_are_to_scale(ecg):
    fig = plots.plot_ecg_12lead(ecg, FS)
    ax = fig.axes[0]
    for line in _traces(fig)["calibration"]:
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert np.ptp(y) == pytest.approx(10.0)  # 1 mV at 10 mm/mV
        top = x[y == y.max()]
        assert np.ptp(top) == pytest.approx(5.0)  # 0.2 s at 25 mm/s
    # Minor grid 1 mm, major 5 mm, on both axes.
    for axis in (ax.xaxis, ax.yaxis):
        assert np.diff(axis.get_minor_locator().tick_values(0, 20)) == pytest.approx(1.0)
        assert np.diff(axis.get_major_locator().tick_values(0, 20)) == pytest.approx(5.0)
    # The axes is exactly as many mm of figure as its data range: true scale when printed.
    w_in, h_in = fig.get_size_inches()
    box = ax.get_position()
    assert box.width * w_in * 25.4 == pytest.approx(np.ptp(ax.get_xlim()))
    assert box.height * h_in * 25.4 == pytest.approx(np.ptp(ax.get_ylim()))
    assert ax.get_aspect() == 1.0
    # The sheet starts and ends on major lines and every baseline is a major line, as on paper.
    assert np.remainder(np.r_[ax.get_xlim(), ax.get_ylim()], 5.0) == pytest.approx(0.0)
    for lead, lines in _traces(fig).items():
        if lead == "calibration":
            continue
        line = lines[0]
        x0 = int(round(line.get_xdata()[0] * FS / 25.0))  # first sample shown
        base = line.get_ydata()[0] - 10.0 * ecg[LEADS.index(lead.split()[-1]), x0]
        assert np.remainder(base, 5.0) == pytest.approx(0.0, abs=1e-9)


def test_ecg_other_rate_keeps_paper_speed():
    fs = 250
    sig = np.zeros((12, 10 * fs))
    line = _traces(plots.plot_ecg_12lead(sig, fs))["rhythm II"][0]
    x = np.asarray(line.get_xdata())
    assert x[-1] + 25.0 / fs == pytest.approx(250.0)  # 10 s at 25 mm/s whatever the rate


@pytest.mark.parametrize("shape", [(11, 5000), (5000, 12), (12,)])
def test_ecg_wrong_shape_raises(shape):
    with pytest.raises(DataError, match=r"\(12, T\)"):
        plots.plot_ecg_12lead(np.zeros(shape))


def test_ecg_unknown_rhythm_lead_raises(ecg):
    with pytest.raises(DataError):
        plots.plot_ecg_12lead(ecg, rhythm_lead="V7")


# ---------------------------------------------------------------------------------------------
# CMR
# ---------------------------------------------------------------------------------------------
X, Y, Z = 24, 20, 12
HEART_SLICES = range(3, 9)


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) image whose slice k has a value ramp + k, and labels in slices 3..8."""
    xx, yy = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
    image = np.stack([xx + 0.1 * yy + 100.0 * k for k in range(Z)], axis=-1)
    labels = np.zeros((X, Y, Z), dtype=np.int16)
    for k in HEART_SLICES:
        d = np.hypot(xx - 8, yy - 10)
        labels[..., k][d < 6] = LABEL_LV_MYO
        labels[..., k][d < 3] = LABEL_LV_BLOOD
        labels[..., k][(np.hypot(xx - 17, yy - 10) < 4) & (labels[..., k] == 0)] = LABEL_RV_BLOOD
    return image, labels


def test_montage_one_axes_per_requested_slice(volume):
    image, labels = volume
    fig = plots.plot_cmr_montage(image, labels, slices=[0, 5, 11], title="ED")
    assert len(fig.axes) == 3
    for ax, k in zip(fig.axes, [0, 5, 11], strict=True):
        assert ax.get_title() == f"slice {k}"
        # x (voxel axis 0) to the right, y (axis 1) up: the array shown is the slice transposed.
        np.testing.assert_array_equal(ax.images[0].get_array(), image[:, :, k].T)
        assert ax.images[0].origin == "lower"
    legend_names = {t.get_text() for t in fig.legends[0].get_texts()}
    assert legend_names == {"LV blood pool", "LV myocardium", "RV blood pool"}
    _render(fig)


def test_montage_default_slices_cover_the_labelled_range(volume):
    image, labels = volume
    fig = plots.plot_cmr_montage(image, labels, max_slices=4)
    shown = [int(ax.get_title().split()[1]) for ax in fig.axes]
    assert len(fig.axes) == 4
    assert shown[0] == HEART_SLICES[0] and shown[-1] == HEART_SLICES[-1]
    # Without labels: the whole stack, every slice when there is room.
    assert len(plots.plot_cmr_montage(image).axes) == Z


def test_montage_contours_one_colour_per_label(volume):
    image, labels = volume
    fig = plots.plot_cmr_montage(image, labels, slices=[0, 5])
    empty, heart = fig.axes
    assert len(empty.collections) == 0  # no labels in slice 0: no contours
    colours = {tuple(np.round(c.get_edgecolor()[0], 3)) for c in heart.collections}
    assert len(heart.collections) == 3 and len(colours) == 3


def test_montage_slice_axis(volume):
    image, labels = volume
    moved = np.moveaxis(image, 2, 0)  # (Z, X, Y)
    fig = plots.plot_cmr_montage(moved, np.moveaxis(labels, 2, 0), slices=[4], slice_axis=0)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), image[:, :, 4].T)


def test_montage_bad_input_raises(volume):
    image, labels = volume
    with pytest.raises(DataError, match="does not match"):
        plots.plot_cmr_montage(image, labels[:-1])
    with pytest.raises(DataError, match="3D"):
        plots.plot_cmr_montage(image[..., 0])
    with pytest.raises(DataError, match="out of range"):
        plots.plot_cmr_montage(image, slices=[Z])


def test_ed_es_two_rows_same_slices(volume):
    image, labels = volume
    es = image * 0.5
    fig = plots.plot_ed_es(image, es, labels, labels, n_slices=3)
    assert len(fig.axes) == 6
    top, bottom = fig.axes[:3], fig.axes[3:]
    shown = [int(ax.get_title().split()[1]) for ax in top]
    assert shown[0] == HEART_SLICES[0] and shown[-1] == HEART_SLICES[-1]
    for ax_ed, ax_es, k in zip(top, bottom, shown, strict=True):
        np.testing.assert_array_equal(ax_ed.images[0].get_array(), image[:, :, k].T)
        np.testing.assert_array_equal(ax_es.images[0].get_array(), es[:, :, k].T)
        # One grey window for both phases, so ES really looks different from ED.
        assert ax_ed.images[0].get_clim() == ax_es.images[0].get_clim()
        # ... and that window is the 1st-99th percentile of both phases together.
        both = np.concatenate([image.ravel(), es.ravel()])
        assert ax_ed.images[0].get_clim() == pytest.approx(tuple(np.percentile(both, [1, 99])))
    assert top[0].get_ylabel() == "ED" and bottom[0].get_ylabel() == "ES"
    _render(fig)


def test_ed_es_mismatched_stacks_raise(volume):
    image, _ = volume
    with pytest.raises(DataError, match="slices"):
        plots.plot_ed_es(image, image[..., :-1])


# ---------------------------------------------------------------------------------------------
# Phenotypes
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = 200
    df = pd.DataFrame({p: rng.normal(100.0, 15.0, n) for p in PHENOTYPES})
    df["sex"] = rng.integers(0, 2, n)
    df.loc[::5, "lvedv_ml"] = np.nan   # some missing
    df["rvef_pct"] = np.nan            # all missing
    return df


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    rows = [dict(phenotype=p, sex=s, mean=90.0 + 20 * s, sd=10.0 + s, source="test")
            for p in ("lvedv_ml", "lvef_pct") for s in (0, 1)]
    return pd.DataFrame(rows)


def test_phenotypes_one_panel_each_with_nans(cohort, reference):
    fig = plots.plot_phenotype_distributions(cohort, reference)
    assert len(fig.axes) == len(PHENOTYPES)
    assert [ax.get_xlabel() for ax in fig.axes][:2] == ["LVEDV (mL)", "LVESV (mL)"]
    rvef = fig.axes[PHENOTYPES.index("rvef_pct")]
    assert "no data" in [t.get_text() for t in rvef.texts]
    _render(fig)


def test_phenotype_histograms_are_densities_with_true_counts(cohort, reference):
    fig = plots.plot_phenotype_distributions(cohort, reference, phenotypes=["lvedv_ml"])
    ax = fig.axes[0]
    hists = {p.get_gid(): p for p in ax.patches if (p.get_gid() or "").startswith("hist-")}
    assert set(hists) == {"hist-female", "hist-male"}
    for patch in hists.values():
        values, edges, _ = patch.get_data()  # StepPatch: (values, edges, baseline)
        assert np.sum(values * np.diff(edges)) == pytest.approx(1.0)  # density: area 1
    counts_text = " ".join(t.get_text() for t in ax.texts)
    for sex, name in ((0, "female"), (1, "male")):
        n = int(cohort.loc[cohort["sex"] == sex, "lvedv_ml"].notna().sum())
        assert f"{name} n={n}" in counts_text


def test_phenotype_reference_band_is_mean_pm_2sd(cohort, reference):
    fig = plots.plot_phenotype_distributions(cohort, reference, phenotypes=["lvef_pct"])
    bands = {p.get_gid(): p for p in fig.axes[0].patches
             if (p.get_gid() or "").startswith("reference-")}
    for sex, name in ((0, "female"), (1, "male")):
        row = reference[(reference.phenotype == "lvef_pct") & (reference.sex == sex)].iloc[0]
        band = bands[f"reference-{name}"]
        assert band.get_x() == pytest.approx(row["mean"] - 2 * row["sd"])
        assert band.get_x() + band.get_width() == pytest.approx(row["mean"] + 2 * row["sd"])


def test_phenotypes_without_grouping_or_reference(cohort):
    fig = plots.plot_phenotype_distributions(cohort, None, phenotypes=["lvesv_ml"], by=None)
    gids = [p.get_gid() for p in fig.axes[0].patches]
    assert gids == ["hist-all"]


def test_phenotypes_missing_column_raises(cohort):
    with pytest.raises(DataError, match="missing"):
        plots.plot_phenotype_distributions(cohort.drop(columns="lvm_g"), None)


# ---------------------------------------------------------------------------------------------
# QC
# ---------------------------------------------------------------------------------------------
def _bar_totals(fig: Figure) -> dict[str, float]:
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    totals = np.zeros(len(names))
    for container in ax.containers:
        totals += [bar.get_width() for bar in container]
    return dict(zip(names, totals, strict=True))


def test_qc_bars_count_rejections_per_reason():
    reasons = ["flat lead V3"] * 3 + ["missing ES frame"] * 2 + ["NaN samples"]
    modality = ["ecg", "ecg", "ecg", "cmr", "cmr", "ecg"]
    qc = pd.DataFrame({"subject_id": list("abcdef"), "modality": modality,
                       "file": [f"f{i}" for i in range(6)], "reason": reasons})
    fig = plots.plot_qc_summary(qc)
    assert len(fig.axes) == 1
    assert _bar_totals(fig) == dict(Counter(reasons))
    assert len(fig.axes[0].containers) == 2  # stacked by modality
    _render(fig)


def test_qc_pools_rare_reasons():
    reasons = [f"reason {i}" for i in range(10) for _ in range(10 - i)]
    qc = pd.DataFrame({"subject_id": range(len(reasons)), "modality": "ecg",
                       "file": "x", "reason": reasons})
    totals = _bar_totals(plots.plot_qc_summary(qc, max_reasons=4))
    assert len(totals) == 4
    assert sum(totals.values()) == len(reasons)
    assert totals["reason 0"] == 10 and totals["other (7 reasons)"] == sum(range(1, 8))


@pytest.mark.parametrize("empty", [pd.DataFrame(),
                                   pd.DataFrame(columns=["subject_id", "modality", "file",
                                                         "reason"])])
def test_qc_empty_frame(empty):
    fig = plots.plot_qc_summary(empty)
    assert len(fig.axes) == 1
    assert "no records rejected" in [t.get_text() for t in fig.axes[0].texts]
    _render(fig)


def test_qc_missing_columns_raise():
    with pytest.raises(DataError, match="reason"):
        plots.plot_qc_summary(pd.DataFrame({"subject_id": ["a"], "modality": ["ecg"]}))


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------
def test_save_figure_writes_png_and_pdf(tmp_path):
    fig = Figure(figsize=(2.0, 1.5))
    fig.add_subplot().plot([0, 1], [0, 1])
    written = plots.save_figure(fig, tmp_path / "sub" / "dir" / "fig.png", dpi=100, pdf=True)
    png, pdf = written
    assert png == tmp_path / "sub" / "dir" / "fig.png" and pdf.suffix == ".pdf"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR: size in pixels
    assert (width, height) == (200, 150)  # figsize (in) x dpi
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_predicted_vs_measured_and_bland_altman() -> None:
    from ecgcmr.plots import plot_predicted_vs_measured

    rng = np.random.default_rng(0)
    t = rng.normal(150, 30, 200)
    p = t + 5 + rng.normal(0, 10, 200)
    fig = plot_predicted_vs_measured(t, p, label="LVEDV (mL)")
    assert len(fig.axes) == 2
    ba = fig.axes[1]
    lines = sorted(line.get_ydata()[0] for line in ba.get_lines())
    d = p - t
    assert lines == pytest.approx(sorted([d.mean(), d.mean() - 1.96 * d.std(ddof=1),
                                          d.mean() + 1.96 * d.std(ddof=1)]))
    with pytest.raises(DataError):
        plot_predicted_vs_measured(t, p[:10], label="x")


def test_kaplan_meier_draws_one_curve_per_group() -> None:
    import pandas as pd

    from ecgcmr.plots import plot_kaplan_meier

    tables = {f"Q{i}": pd.DataFrame({"time": [0, 1, 2], "survival": [1, 0.9 - i / 10, 0.8]})
              for i in range(1, 5)}
    fig = plot_kaplan_meier(tables, p_value=0.003)
    assert len(fig.axes[0].get_lines()) == 4
    assert "0.003" in fig.axes[0].get_legend().get_title().get_text()
