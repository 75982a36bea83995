"""Information ceilings: how much of each phenotype / outcome a 12-lead ECG can hold at all.

In the synthetic world the truth is known, so the low R² of a learned ECG encoder can be put
next to what the ECG *could* give. For each target (every phenotype of
:data:`ecgcmr.constants.PHENOTYPES`, as the generator's truth, and each condition's
``<c>_ever`` flag) :func:`compute_ceilings` reports, all out of fold (``folds``-fold
cross-validation, fixed ``seed``; R² for phenotypes, AUROC for outcomes):

``upper_bound``
    the target predicted from exactly the latent variables the ECG generator reads
    (:data:`ECG_GENERATOR_INPUTS`, as :func:`generator_inputs` builds them) by gradient
    boosting. The ECG is a function of these and of its own random stream, which is independent
    of everything else, so nothing else about the target can be in it: no ECG model can beat
    this number beyond estimation noise. (A finite-sample learner only approximates the true
    ceiling, from below: with few cases, e.g. an outcome with ~10 cases in 2,000, a linear
    readout of fewer variables can score above it.)
``ecg_estimate``
    the same learner on the standard measurements of the rendered ECG
    (:data:`ecgcmr.ecg_measurements.FEATURE_NAMES`: rate, intervals, axes, amplitudes): what
    a good ECG representation should reach at least.
``readout_ed`` / ``readout_es`` / ``readout_dual``
    what an ECG representation aligned to the CMR of one phase (ED only, ES only) or of both
    could reach at best, in two steps: (a) each anatomy variable of the phase
    (:data:`ANATOMY_ED`, :data:`ANATOMY_ES`; their union for ``dual``) is predicted from the
    ECG measurements by gradient boosting, out of fold (cross-fitting: a subject's prediction
    comes from a model that never saw that subject); (b) the target is read out *linearly*
    from those predicted anatomy variables (standardised, then ordinary least squares;
    logistic regression for outcomes), again out of fold with the same folds — a linear probe
    on an embedding whose information about the heart is the best ECG estimate of that
    phase's anatomy. Step (b) is trained on other subjects' out-of-fold predictions (stacking).
``cmr_measured`` (optional, phenotypes only)
    R² of the phenotype measured from the rendered label maps
    (:func:`ecgcmr.data.phenotypes.measure_phenotypes`, as in ``manifest.csv``) against the truth,
    no fitting: how much of the truth the CMR labels themselves carry (disc summation on
    10 mm slices). Downstream probes are scored against these measured values.

Every value has a 95 % percentile bootstrap interval (``<name>_ci_low``, ``<name>_ci_high``)
over subjects, resampling the out-of-fold predictions (the same ``n_boot`` resamples, from
``bootstrap_indices(n, n_boot, seed)`` on the rows sorted by ``subject_id``, for every column
of a row); the models are not refitted per resample, so the interval is the sampling
uncertainty of the scored subjects, not of the fits.

Inputs come from a cohort folder (:func:`inputs_from_cohort`: ``latent/latent_state.csv``,
the WFDB records, ``manifest.csv``) or, much faster, from :func:`generate_without_cmr`, which
draws the same subjects as ``ecgcmr synth`` (same per-subject seed streams) without rendering
the CMR.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ecgcmr.constants import CONDITIONS, ECG_FS_HZ, PHENOTYPES
from ecgcmr.ecg_measurements import FEATURE_NAMES, measure_ecg
from ecgcmr.errors import DataError
from ecgcmr.evaluate.outcomes import auroc
from ecgcmr.evaluate.phenotypes import bootstrap_indices, percentile_ci, r2_score
from ecgcmr.parallel import map_subjects
from ecgcmr.synth.cohort import ECG_ADC_GAIN_PER_MV, CohortSpec, subject_id
from ecgcmr.synth.ecg import simulate_ecg
from ecgcmr.synth.outcomes import sample_outcomes
from ecgcmr.synth.physiology import sample_state, states_to_frame

# ============================================================================================
# What the ECG is made of
# ============================================================================================
#: The latent variables ``simulate_ecg`` reads, each in the form it reads it (the set of state
#: keys is ``ecgcmr.synth.ecg.USED_KEYS``, ecg.py:295-299). Line numbers are ecgcmr/synth/ecg.py.
#: Two keys enter only through a function of them, and the bound uses that function (tighter,
#: still exact: the ECG depends on the key only through it):
#: ``archetype`` is read only as ``== "conduction"`` and ``lvef`` only as the strain term
#: ``max(0, 0.45 - lvef)``. (LVEF also reaches the ECG through ``heart_rate_bpm``, which the
#: physiology drew with stroke volume, and LVESV is never read.)
ECG_GENERATOR_INPUTS: tuple[str, ...] = (
    "sex",                  # :486, :510 LV-mass reference of strain/LVH shift; :631 breast tissue
    "age_years",            # :347 respiratory sinus arrhythmia
    "height_cm",            # :625 thorax size -> electrode positions
    "bmi",                  # :620 chest-wall fat -> electrode distance
    "is_conduction",        # :505 archetype == "conduction" (LBBB-like QRS and T)
    "lvedv_ml",             # :506/:518 QRS amplitude; :666 dipole-site scale
    "lvef_strain_term",     # :488 max(0, 0.45 - lvef), T-wave strain
    "lvm_g",                # :486 strain, :510 LVH axis shift, :517 QRS, :531 T amplitude
    "heart_rate_bpm",       # :339 RR intervals
    "pr_ms",                # :504 P-wave timing (ignored in AF)
    "qrs_ms",               # :502 QRS duration
    "qt_ms",                # :503 T end; :344 refractory floor in AF
    "heart_azimuth_deg",    # :429 anatomical rotation (electrical axis, dipole sites)
    "heart_elevation_deg",  # :430
    "in_af",                # :279, :341 fibrillatory waves, irregular RR, no P wave
)
#: Anatomy an encoder aligned to one CMR phase could encode: the volumes of that phase, and the
#: LV mass, which both phases show (the myocardial volume is conserved from ED to ES). The
#: renderer's shape draws (cmr.py ``_build_heart``) come from the CMR stream, which the ECG
#: never sees: their best ECG estimate is a constant, so they add nothing and are left out.
ANATOMY_ED: tuple[str, ...] = ("lvedv_ml", "rvedv_ml", "lvm_g")
ANATOMY_ES: tuple[str, ...] = ("lvesv_ml", "rvesv_ml", "lvm_g")
#: Outcome targets: the paper's "ever diagnosed" labels.
OUTCOME_TARGETS: tuple[str, ...] = tuple(f"{c}_ever" for c in CONDITIONS)
#: Ceiling columns of :func:`compute_ceilings`, each with ``_ci_low`` / ``_ci_high``.
CEILINGS: tuple[str, ...] = ("upper_bound", "ecg_estimate", "readout_ed", "readout_es",
                             "readout_dual", "cmr_measured")
#: The flexible learner (regressor and classifier alike). Early stopping on an inner 10 %
#: split picks the number of trees, so one setting suits 150 and 20,000 subjects; small
#: trees and a slow rate because the signal is weak and the noise large.
BOOSTING_PARAMS: dict[str, object] = {
    "learning_rate": 0.05, "max_iter": 1000, "max_leaf_nodes": 15, "min_samples_leaf": 20,
    "early_stopping": True, "validation_fraction": 0.1, "n_iter_no_change": 20,
}


# ============================================================================================
# Inputs
# ============================================================================================
class CeilingInputs(NamedTuple):
    """What :func:`compute_ceilings` needs, one row per subject, keyed by ``subject_id``."""

    state: pd.DataFrame                 # latent state (columns of physiology.STATE_KEYS)
    ecg_features: pd.DataFrame          # subject_id + ecg_measurements.FEATURE_NAMES
    outcomes: pd.DataFrame              # subject_id + OUTCOME_TARGETS
    cmr_phenotypes: pd.DataFrame | None  # subject_id + PHENOTYPES measured from label maps
    systolic_coupling: float = 1.0      # the world's (cohort.json), for compute_ceilings


def generator_inputs(state: pd.DataFrame, systolic_coupling: float = 1.0) -> pd.DataFrame:
    """The :data:`ECG_GENERATOR_INPUTS` of each subject as numbers (same row order). The
    strain term is read with the world's systolic coupling as its weight: at 0 it is not read
    at all (a constant column)."""
    out = pd.DataFrame(index=state.index)
    for name in ECG_GENERATOR_INPUTS:
        if name == "is_conduction":
            out[name] = (state["archetype"].astype(str) == "conduction").astype(float)
        elif name == "lvef_strain_term":
            out[name] = systolic_coupling * np.maximum(0.0, 0.45 - state["lvef"].astype(float))
        elif name == "in_af":
            out[name] = state["in_af"].astype(str).str.lower().isin(("true", "1")).astype(float)
        else:
            out[name] = state[name].astype(float)
    return out


def truth_phenotypes(state: pd.DataFrame) -> pd.DataFrame:
    """``subject_id`` and the true :data:`PHENOTYPES` of each subject (physiology's own
    definitions: ESV = EDV (1 - EF), EF in %), same row order."""
    frame = states_to_frame(state.to_dict("records"))
    return frame[["subject_id", *PHENOTYPES]].set_axis(state.index)


def stored_ecg(ecg: np.ndarray) -> np.ndarray:
    """The ECG as a cohort's WFDB record gives it back: 1 µV steps, float32 mV (so the fast
    path measures exactly what :func:`inputs_from_cohort` measures)."""
    return (np.round(ecg * ECG_ADC_GAIN_PER_MV) / ECG_ADC_GAIN_PER_MV).astype(np.float32)


def simulate_subject_without_cmr(seed: int, index: int, systolic_coupling: float = 1.0
                                 ) -> tuple[dict[str, object], np.ndarray, dict[str, float]]:
    """One cohort subject's latent state, ECG (``(12, 5000)`` mV) and outcomes, without the CMR.

    Same streams as ``ecgcmr.synth.cohort.make_subject``: ``SeedSequence([seed, index])``
    split in four (state, CMR, ECG, outcomes); the CMR stream is simply not used, so the
    subject is the one ``ecgcmr synth`` writes for this cohort seed and index.
    """
    rng_state, _rng_cmr, rng_ecg, rng_outcome = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(4))
    state = sample_state(rng_state, subject_id(index), systolic_coupling=systolic_coupling)
    ecg = simulate_ecg(state, rng_ecg, fs=ECG_FS_HZ, systolic_coupling=systolic_coupling)
    return state, ecg, sample_outcomes(state, rng_outcome)


def _measured_subject(job: tuple[int, int, float]) -> tuple[dict, dict, dict]:
    state, ecg, outcomes = simulate_subject_without_cmr(*job)
    features = {"subject_id": state["subject_id"], **measure_ecg(stored_ecg(ecg), ECG_FS_HZ)}
    flags = {"subject_id": state["subject_id"], **{k: outcomes[k] for k in OUTCOME_TARGETS}}
    return state, features, flags


def generate_without_cmr(spec: CohortSpec, *, indices: Sequence[int] | None = None,
                         workers: int = 1) -> CeilingInputs:
    """The fast path: state, ECG measurements and outcome flags of a cohort's subjects.

    ~10 ms per subject (ECG simulation + measurement; the ECG is measured as soon as it is
    drawn, so memory does not grow with the cohort). ``indices`` defaults to all
    ``spec.n_subjects``; ``cmr_phenotypes`` is None (no CMR rendered).
    """
    todo = range(spec.n_subjects) if indices is None else indices
    jobs = ((spec.seed, int(i), spec.systolic_coupling) for i in todo)
    states, features, flags = [], [], []
    for state, feat, flag in map_subjects(_measured_subject, jobs, workers, chunksize=16):
        states.append(state)
        features.append(feat)
        flags.append(flag)
    return CeilingInputs(pd.DataFrame(states), pd.DataFrame(features), pd.DataFrame(flags), None,
                         spec.systolic_coupling)


def inputs_from_cohort(folder: str | Path) -> CeilingInputs:
    """Inputs from a generated cohort folder: ``latent/latent_state.csv``, each subject's WFDB
    record (read and measured), and from ``manifest.csv`` the outcome flags and the phenotypes
    measured from the label maps (for ``cmr_measured``)."""
    from ecgcmr.data.ecg import read_ecg  # here: the data package is heavier than this module
    from ecgcmr.data.manifest import read_manifest

    folder = Path(folder)
    state = pd.read_csv(folder / "latent" / "latent_state.csv")
    manifest = read_manifest(folder / "manifest.csv")
    rows = []
    for sid, path in zip(manifest["subject_id"], manifest["ecg_path"], strict=True):
        ecg, fs = read_ecg(path)
        rows.append({"subject_id": sid, **measure_ecg(ecg, fs)})
    spec = json.loads((folder / "cohort.json").read_text())
    return CeilingInputs(state, pd.DataFrame(rows),
                         manifest[["subject_id", *OUTCOME_TARGETS]].copy(),
                         manifest[["subject_id", *PHENOTYPES]].copy(),
                         float(spec.get("systolic_coupling", 1.0)))


# ============================================================================================
# Ceilings
# ============================================================================================
def compute_ceilings(
    state: pd.DataFrame,
    ecg_features: pd.DataFrame,
    *,
    targets: Sequence[str] = PHENOTYPES,
    outcomes: pd.DataFrame | None = None,
    cmr_phenotypes: pd.DataFrame | None = None,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    threads: int | None = 1,
    systolic_coupling: float = 1.0,
) -> pd.DataFrame:
    """The ceilings described in this module's docstring, one row per target.

    Args:
        state: latent state, one row per subject (``latent/latent_state.csv``).
        ecg_features: ``subject_id`` + ``FEATURE_NAMES`` (NaN allowed: the learner handles it).
        targets: phenotypes (names of ``PHENOTYPES``), taken as the truth from ``state``.
        outcomes: ``subject_id`` + 0/1 ``<c>_ever`` columns; every column but ``subject_id``
            is a target. A flag with fewer than ``folds`` cases (or controls) gets NaN.
        cmr_phenotypes: ``subject_id`` + measured phenotypes, for ``cmr_measured``.
        folds, seed: the cross-validation (``KFold`` / ``StratifiedKFold``, shuffled with
            ``seed``; the boosting's inner split also uses ``seed``); every column of a row
            uses the same folds.
        n_boot: bootstrap resamples of the CIs (seed ``seed``).
        threads: OpenMP threads of the boosting (None: all cores). One by default: the
            fits are small, and spinning OpenMP threads on a busy machine were many times
            slower than one thread.
        systolic_coupling: the world's (``CohortSpec.systolic_coupling``): it decides which
            generator inputs the upper bound may use (:func:`generator_inputs`).

    Returns:
        Columns ``target, metric ("r2" | "auroc"), n, n_cases`` (cases for outcomes), then
        for each of :data:`CEILINGS` the value, ``_ci_low``, ``_ci_high`` (NaN where it does
        not apply). ``attrs["timings_s"]``: seconds spent on the anatomy fits, the target
        fits and the bootstrap.
    """
    with threadpool_limits(limits=threads, user_api="openmp"):
        return _compute(state, ecg_features, targets, outcomes, cmr_phenotypes, folds, seed,
                        n_boot, systolic_coupling)


def _compute(state: pd.DataFrame, ecg_features: pd.DataFrame, targets: Sequence[str],
             outcomes: pd.DataFrame | None, cmr_phenotypes: pd.DataFrame | None, folds: int,
             seed: int, n_boot: int, systolic_coupling: float) -> pd.DataFrame:
    unknown = [t for t in targets if t not in PHENOTYPES]
    if unknown:
        raise DataError("unknown phenotype targets", expected=", ".join(PHENOTYPES),
                        found=", ".join(unknown))
    data = _aligned(state, ecg_features, outcomes, cmr_phenotypes)
    timings = {"anatomy_fits": 0.0, "target_fits": 0.0, "bootstrap": 0.0}
    x_latent = generator_inputs(data.state, systolic_coupling).to_numpy()
    x_ecg = data.ecg_features[list(FEATURE_NAMES)].to_numpy(dtype=float)
    truth = truth_phenotypes(data.state)

    t0 = time.perf_counter()
    cv = KFold(folds, shuffle=True, random_state=seed)
    anatomy_names = list(dict.fromkeys(ANATOMY_ED + ANATOMY_ES))
    anatomy = pd.DataFrame({name: _oof_boosting(x_ecg, truth[name].to_numpy(), cv, seed)
                            for name in anatomy_names})
    timings["anatomy_fits"] = time.perf_counter() - t0
    readout_sets = {"readout_ed": list(ANATOMY_ED), "readout_es": list(ANATOMY_ES),
                    "readout_dual": anatomy_names}

    idx = bootstrap_indices(len(truth), n_boot, seed)
    jobs = [(t, truth[t].to_numpy(dtype=float), False) for t in targets]
    if data.outcomes is not None:
        jobs += [(c, data.outcomes[c].to_numpy(dtype=float), True)
                 for c in data.outcomes.columns if c != "subject_id"]
    rows = []
    for name, y, binary in jobs:
        t0 = time.perf_counter()
        preds = _predictions(y, binary, x_latent, x_ecg, anatomy, readout_sets, folds, seed)
        if not binary and data.cmr_phenotypes is not None:
            preds["cmr_measured"] = data.cmr_phenotypes[name].to_numpy(dtype=float)
        t1 = time.perf_counter()
        rows.append(_score_row(name, y, binary, preds, idx))
        timings["target_fits"] += t1 - t0
        timings["bootstrap"] += time.perf_counter() - t1
    table = pd.DataFrame(rows, columns=_columns())
    table.attrs["timings_s"] = timings
    return table


class _Aligned(NamedTuple):
    state: pd.DataFrame
    ecg_features: pd.DataFrame
    outcomes: pd.DataFrame | None
    cmr_phenotypes: pd.DataFrame | None


def _aligned(state: pd.DataFrame, ecg_features: pd.DataFrame, outcomes: pd.DataFrame | None,
             cmr_phenotypes: pd.DataFrame | None) -> _Aligned:
    """Every frame on the same subjects, rows sorted by ``subject_id`` (so the result does
    not depend on row order); a subject missing from one of them is an error."""
    frames = {"state": state, "ecg_features": ecg_features, "outcomes": outcomes,
              "cmr_phenotypes": cmr_phenotypes}
    ids = sorted(map(str, state["subject_id"]))
    if len(set(ids)) != len(ids):
        raise DataError("duplicate subject_id in the latent state")
    out = {}
    for key, frame in frames.items():
        if frame is None:
            out[key] = None
            continue
        if "subject_id" not in frame.columns:
            raise DataError(f"{key} lacks subject_id", expected="subject_id column")
        keyed = frame.assign(subject_id=frame["subject_id"].astype(str)).set_index("subject_id")
        missing = sorted(set(ids) - set(keyed.index))
        if missing:
            raise DataError(f"{key} lacks subjects of the latent state", subject=missing[0],
                            found=f"{len(missing)} missing")
        out[key] = keyed.loc[ids].reset_index()
    return _Aligned(**out)


def _columns() -> list[str]:
    cols = ["target", "metric", "n", "n_cases"]
    for name in CEILINGS:
        cols += [name, f"{name}_ci_low", f"{name}_ci_high"]
    return cols


def _boosting(binary: bool, seed: int) -> HistGradientBoostingRegressor:
    cls = HistGradientBoostingClassifier if binary else HistGradientBoostingRegressor
    return cls(**BOOSTING_PARAMS, random_state=seed)


def _linear(binary: bool):  # noqa: ANN202 - a sklearn pipeline
    return make_pipeline(StandardScaler(),
                         LogisticRegression(max_iter=1000) if binary else LinearRegression())


def _oof(model, x: np.ndarray, y: np.ndarray, cv, binary: bool) -> np.ndarray:  # noqa: ANN001
    """Out-of-fold predictions (probability of a case for a binary target)."""
    if binary:
        return cross_val_predict(clone(model), x, y, cv=cv, method="predict_proba")[:, 1]
    return cross_val_predict(clone(model), x, y, cv=cv)


def _oof_boosting(x: np.ndarray, y: np.ndarray, cv, seed: int,  # noqa: ANN001
                  binary: bool = False) -> np.ndarray:
    return _oof(_boosting(binary, seed), x, y, cv, binary)


def _predictions(y: np.ndarray, binary: bool, x_latent: np.ndarray, x_ecg: np.ndarray,
                 anatomy: pd.DataFrame, readout_sets: dict[str, list[str]], folds: int,
                 seed: int) -> dict[str, np.ndarray]:
    """Out-of-fold predictions of one target for each fitted ceiling ({} if a flag is too
    rare to stratify into ``folds`` folds)."""
    if binary:
        cases = int(np.sum(y == 1))
        if min(cases, y.size - cases) < folds:
            return {}
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        cv = KFold(folds, shuffle=True, random_state=seed)
    preds = {"upper_bound": _oof_boosting(x_latent, y, cv, seed, binary),
             "ecg_estimate": _oof_boosting(x_ecg, y, cv, seed, binary)}
    for name, columns in readout_sets.items():
        preds[name] = _oof(_linear(binary), anatomy[columns].to_numpy(), y, cv, binary)
    return preds


def _score_row(name: str, y: np.ndarray, binary: bool, preds: dict[str, np.ndarray],
               idx: np.ndarray) -> list[object]:
    """One output row: each ceiling's score on all subjects and its percentile interval over
    the bootstrap resamples ``idx`` (the same rows for every ceiling)."""
    row: list[object] = [name, "auroc" if binary else "r2", int(y.size),
                         int(np.sum(y == 1)) if binary else math.nan]
    for ceiling in CEILINGS:
        if ceiling not in preds:
            row += [math.nan] * 3
            continue
        p = preds[ceiling]
        if binary:
            value = auroc(y, p)
            stats = np.array([auroc(y[i], p[i]) for i in idx])
        else:
            value = float(r2_score(y, p))
            stats = r2_score(y[idx], p[idx])  # vectorised over the resamples
        row += [value, *percentile_ci(stats)]
    return row


def ci_half_widths(table: pd.DataFrame) -> pd.DataFrame:
    """Half-width of each ceiling's interval, ``(ci_high - ci_low) / 2``, per target."""
    return pd.DataFrame({c: (table[f"{c}_ci_high"] - table[f"{c}_ci_low"]) / 2.0
                         for c in CEILINGS}).set_axis(table["target"])


# ============================================================================================
# Ceilings beside learned results
# ============================================================================================
#: Where the committed ceiling tables live (``benchmarks/ceilings.py --out``), one per world
#: and size: ``ceilings-coupling<c>-n<N>-seed<s>.csv`` (:data:`CEILING_FILE`).
CEILINGS_FOLDER = Path("results") / "ceilings"
CEILING_FILE = re.compile(r"ceilings-coupling(?P<coupling>[\d.]+)-n(?P<n>\d+)-seed(?P<seed>\d+)\.csv")


class CeilingFile(NamedTuple):
    """A committed ceilings table and what its name says it was made from."""

    coupling: float
    n: int
    seed: int
    path: Path

    def command(self) -> str:
        """The command that writes this file."""
        return (f"python benchmarks/ceilings.py --n {self.n} --seed {self.seed} "
                f"--systolic-coupling {self.coupling:g} --out {CEILINGS_FOLDER}/{self.path.name}")


def ceiling_files(folder: str | Path | None = None) -> list[CeilingFile]:
    """Every committed ceilings table under ``folder`` (default: :data:`CEILINGS_FOLDER` under
    the project root), by coupling, then size."""
    from ecgcmr.files import resolve

    root = Path(folder) if folder is not None else resolve(CEILINGS_FOLDER)
    found = [(CEILING_FILE.fullmatch(f.name), f) for f in root.glob("ceilings-*.csv")]
    return sorted(CeilingFile(float(m["coupling"]), int(m["n"]), int(m["seed"]), f)
                  for m, f in found if m)


def committed_ceilings(systolic_coupling: float = 1.0, folder: str | Path | None = None
                       ) -> pd.DataFrame | None:
    """The committed ceilings of the synthetic world with this coupling (the table with the
    most subjects), or None when none was computed for it; ``source`` names its file."""
    files = [f for f in ceiling_files(folder) if f.coupling == systolic_coupling]
    if not files:
        return None
    return pd.read_csv(files[-1].path).assign(source=files[-1].path.name)


def fraction_of_ceiling(metrics: pd.DataFrame, ceilings: pd.DataFrame, *,
                        metric: str = "r2") -> pd.DataFrame:
    """Each learned result beside the ceilings of its target, and how much of them it reached.

    ``metrics`` is notebook 03's tidy table (``method, seed, model, target, metric, value``);
    one row per method × seed × model × target comes back with ``learned`` (its ``metric``),
    the ceilings with their intervals, and ``fraction_of_ecg_estimate`` = learned /
    ``ecg_estimate``, ``fraction_of_upper_bound`` = learned / ``upper_bound``. The learned R²
    is scored against the CMR-measured phenotypes, the ceilings against the generator's truth
    (``cmr_measured`` says how close those are).
    """
    learned = metrics[metrics["metric"] == metric].rename(columns={"value": "learned"})
    keep = ["target", *[c for c in ceilings.columns if c.split("_ci_")[0] in CEILINGS],
            *(["source"] if "source" in ceilings.columns else [])]
    out = learned[["method", "seed", "model", "target", "learned"]].merge(
        ceilings[keep], on="target", how="inner")
    out["fraction_of_ecg_estimate"] = out["learned"] / out["ecg_estimate"]
    out["fraction_of_upper_bound"] = out["learned"] / out["upper_bound"]
    return out.reset_index(drop=True)


def beside_ceilings(r2: pd.DataFrame, ceilings: pd.DataFrame | None) -> pd.DataFrame:
    """A pivot of learned R² (index ``target``; one column per method / model) with the
    world's ``ecg_estimate`` and ``upper_bound`` beside it and, for each learned column, the
    fraction of the ECG-side estimate it reached (``<column> / ecg_estimate``). Returned
    unchanged without ceilings (real data, or a world none was computed for)."""
    if ceilings is None:
        return r2
    learned = r2.set_axis([" ".join(map(str, c)) if isinstance(c, tuple) else str(c)
                           for c in r2.columns], axis=1)      # (method, model) -> one name
    out = learned.join(ceilings.set_index("target")[["ecg_estimate", "upper_bound"]],
                       how="left")
    for column in learned.columns:
        out[f"{column} / ecg_estimate"] = learned[column] / out["ecg_estimate"]
    return out


__all__ = [
    "ANATOMY_ED", "beside_ceilings", "ANATOMY_ES", "BOOSTING_PARAMS", "CEILINGS", "CEILINGS_FOLDER",
    "CEILING_FILE", "CeilingFile", "ceiling_files",
    "ECG_GENERATOR_INPUTS", "OUTCOME_TARGETS", "CeilingInputs", "ci_half_widths",
    "committed_ceilings", "compute_ceilings", "fraction_of_ceiling",
    "generate_without_cmr", "generator_inputs", "inputs_from_cohort",
    "simulate_subject_without_cmr", "stored_ecg", "truth_phenotypes",
]
