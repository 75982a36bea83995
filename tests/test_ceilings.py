"""Information ceilings (ecgcmr.synth.ceilings) on a small rendered cohort.

One 150-subject tiny-profile cohort (with CMR, ~10 s) serves every test: the fast path must
give the same subjects, and each ceiling must equal a direct sklearn computation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ecgcmr.constants import PHENOTYPES
from ecgcmr.ecg_measurements import FEATURE_NAMES
from ecgcmr.errors import DataError
from ecgcmr.evaluate.phenotypes import bootstrap_indices
from ecgcmr.synth.ceilings import (
    ANATOMY_ES,
    BOOSTING_PARAMS,
    CEILINGS,
    ECG_GENERATOR_INPUTS,
    OUTCOME_TARGETS,
    CeilingInputs,
    compute_ceilings,
    generate_without_cmr,
    inputs_from_cohort,
    truth_phenotypes,
)
from ecgcmr.synth.cohort import cohort_spec, generate_cohort
from ecgcmr.synth.ecg import USED_KEYS, simulate_ecg
from ecgcmr.synth.physiology import sample_state

N, SEED, N_BOOT = 150, 0, 200


@pytest.fixture(autouse=True)
def _one_openmp_thread():  # noqa: ANN202
    # as compute_ceilings does: spinning OpenMP threads on a shared machine cost minutes
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def spec():  # noqa: ANN201
    return cohort_spec("tiny", seed=SEED, n_subjects=N)


@pytest.fixture(scope="module")
def cohort(spec, tmp_path_factory: pytest.TempPathFactory) -> CeilingInputs:  # noqa: ANN001
    out = tmp_path_factory.mktemp("ceilings") / "cohort"
    generate_cohort(out, spec, workers=1, progress=False)
    return inputs_from_cohort(out)


@pytest.fixture(scope="module")
def table(cohort: CeilingInputs) -> pd.DataFrame:
    return compute_ceilings(cohort.state, cohort.ecg_features, outcomes=cohort.outcomes,
                            cmr_phenotypes=cohort.cmr_phenotypes, seed=SEED, n_boot=N_BOOT)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("subject_id").reset_index(drop=True)


def test_fast_path_gives_the_cohorts_subjects(spec, cohort: CeilingInputs) -> None:  # noqa: ANN001
    fast = generate_without_cmr(spec)
    assert fast.cmr_phenotypes is None
    # the fast path measures the ECG as the WFDB record stores it: identical features
    pd.testing.assert_frame_equal(_sorted(fast.ecg_features), _sorted(cohort.ecg_features))
    pd.testing.assert_frame_equal(_sorted(fast.outcomes), _sorted(cohort.outcomes),
                                  check_dtype=False)
    # the latent state went through a CSV: equal to the last bits
    pd.testing.assert_frame_equal(_sorted(truth_phenotypes(fast.state)),
                                  _sorted(truth_phenotypes(cohort.state)), rtol=1e-12)


def test_generator_inputs_are_what_the_ecg_reads() -> None:
    base = {"is_conduction": "archetype", "lvef_strain_term": "lvef"}
    assert {base.get(k, k) for k in ECG_GENERATOR_INPUTS} == set(USED_KEYS)
    # nothing outside the inputs, nor lvef above 0.45, nor a non-conduction archetype, changes
    # the ECG drawn from the same stream
    state = sample_state(np.random.default_rng(3), "X")
    state.update(archetype="normal", lvef=0.60)
    other = {**state, "archetype": "dilated", "lvef": 0.50, "rvedv_ml": 300.0, "rvef": 0.2,
             "sbp_mmhg": 190.0, "weight_kg": 1.0, "bsa_m2": 1.0, "smoking": 2, "alcohol": 1}
    a = simulate_ecg(state, np.random.default_rng(5))
    b = simulate_ecg(other, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    # ... while the strain term does
    c = simulate_ecg({**state, "lvef": 0.30}, np.random.default_rng(5))
    assert not np.array_equal(a, c)


def test_table_shape(table: pd.DataFrame) -> None:
    assert list(table["target"]) == [*PHENOTYPES, *OUTCOME_TARGETS]
    assert (table.loc[table["target"].isin(PHENOTYPES), "metric"] == "r2").all()
    assert (table.loc[table["target"].isin(OUTCOME_TARGETS), "metric"] == "auroc").all()
    assert (table["n"] == N).all()
    for c in CEILINGS:
        ok = table[c].notna()
        assert (table.loc[ok, f"{c}_ci_low"] <= table.loc[ok, c] + 1e-12).all(), c
        assert (table.loc[ok, c] <= table.loc[ok, f"{c}_ci_high"] + 1e-12).all(), c
    assert set(table.attrs["timings_s"]) == {"anatomy_fits", "target_fits", "bootstrap"}


def _xy(cohort: CeilingInputs, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    state = _sorted(cohort.state)
    x = _sorted(cohort.ecg_features)[list(FEATURE_NAMES)].to_numpy(dtype=float)
    truth = truth_phenotypes(state)
    return x, truth[target].to_numpy(), truth


def test_ecg_estimate_equals_direct_computation(cohort: CeilingInputs,
                                                table: pd.DataFrame) -> None:
    x, y, _ = _xy(cohort, "lvedv_ml")
    cv = KFold(5, shuffle=True, random_state=SEED)
    pred = cross_val_predict(HistGradientBoostingRegressor(**BOOSTING_PARAMS, random_state=SEED),
                             x, y, cv=cv)
    row = table.set_index("target").loc["lvedv_ml"]
    assert row["ecg_estimate"] == pytest.approx(r2_score(y, pred), rel=1e-12, abs=1e-12)
    # the interval: the same resamples of the out-of-fold pairs, percentiles 2.5 / 97.5
    stats = [r2_score(y[i], pred[i]) for i in bootstrap_indices(y.size, N_BOOT, SEED)]
    low, high = np.percentile(stats, [2.5, 97.5])
    assert row["ecg_estimate_ci_low"] == pytest.approx(low, abs=1e-12)
    assert row["ecg_estimate_ci_high"] == pytest.approx(high, abs=1e-12)


def test_readout_equals_direct_computation(cohort: CeilingInputs, table: pd.DataFrame) -> None:
    x, y, truth = _xy(cohort, "lvef_pct")
    cv = KFold(5, shuffle=True, random_state=SEED)
    boost = HistGradientBoostingRegressor(**BOOSTING_PARAMS, random_state=SEED)
    anatomy = np.column_stack([cross_val_predict(boost, x, truth[a].to_numpy(), cv=cv)
                               for a in ANATOMY_ES])
    pred = cross_val_predict(make_pipeline(StandardScaler(), LinearRegression()), anatomy, y,
                             cv=cv)
    got = table.set_index("target").loc["lvef_pct", "readout_es"]
    assert got == pytest.approx(r2_score(y, pred), rel=1e-12, abs=1e-12)


def test_cmr_ceiling_is_measured_against_truth(cohort: CeilingInputs,
                                               table: pd.DataFrame) -> None:
    truth = truth_phenotypes(_sorted(cohort.state))
    measured = _sorted(cohort.cmr_phenotypes)
    rows = table.set_index("target")
    for name in PHENOTYPES:
        assert rows.loc[name, "cmr_measured"] == pytest.approx(
            r2_score(truth[name], measured[name]), rel=1e-12, abs=1e-12)
    assert rows.loc["lvedv_ml", "cmr_measured"] > 0.9   # the labels carry the volumes
    assert rows.loc[list(OUTCOME_TARGETS), "cmr_measured"].isna().all()


def test_outcomes_get_auroc(table: pd.DataFrame) -> None:
    rows = table[table["metric"] == "auroc"]
    fitted = [c for c in CEILINGS if c != "cmr_measured"]
    enough = rows["n_cases"].between(5, N - 5)
    assert enough.any()                                  # CAD and AF at 150 subjects
    values = rows.loc[enough, fitted].to_numpy()
    assert np.all((values >= 0) & (values <= 1))
    assert rows.loc[~enough, fitted].isna().all().all()  # too rare to stratify: NaN


def test_upper_bound_above_ecg_estimate_on_average(table: pd.DataFrame) -> None:
    rows = table[table["metric"] == "r2"].set_index("target")
    slack = (rows["ecg_estimate_ci_high"] - rows["ecg_estimate_ci_low"]) / 2
    gap = rows["upper_bound"] - rows["ecg_estimate"]
    print("\nupper_bound - ecg_estimate (R², 150 subjects):\n" + gap.round(3).to_string())
    assert gap.mean() >= -slack.mean(), gap


def test_misaligned_inputs_are_refused(cohort: CeilingInputs) -> None:
    with pytest.raises(DataError, match="lacks subjects"):
        compute_ceilings(cohort.state, cohort.ecg_features.iloc[1:], n_boot=10)
    with pytest.raises(DataError, match="unknown phenotype"):
        compute_ceilings(cohort.state, cohort.ecg_features, targets=["lvef"], n_boot=10)


def test_inputs_from_cohort_reads_every_subject(cohort: CeilingInputs) -> None:
    assert len(cohort.ecg_features) == len(cohort.state) == N
    assert math.isfinite(cohort.ecg_features["hr_bpm"].median())
    assert isinstance(cohort.cmr_phenotypes, pd.DataFrame)


def test_fraction_of_ceiling_and_the_committed_table(tmp_path) -> None:  # noqa: ANN001
    from ecgcmr.synth.ceilings import committed_ceilings, fraction_of_ceiling

    ceilings = pd.DataFrame({"target": ["lvef_pct", "lvedv_ml"], "metric": "r2",
                             **{c: [0.5, 0.8] for c in CEILINGS},
                             **{f"{c}_ci_{e}": [0.4, 0.7] for c in CEILINGS
                                for e in ("low", "high")}})
    ceilings.assign(upper_bound=[0.6, 0.9]).to_csv(
        tmp_path / "ceilings-coupling0-n100-seed1.csv", index=False)
    ceilings.to_csv(tmp_path / "ceilings-coupling0-n2000-seed1.csv", index=False)
    found = committed_ceilings(0.0, folder=tmp_path)
    assert found["source"].iloc[0] == "ceilings-coupling0-n2000-seed1.csv"   # most subjects
    assert committed_ceilings(3.0, folder=tmp_path) is None
    metrics = pd.DataFrame({"method": "dual", "seed": 0, "model": "probe",
                            "target": ["lvef_pct", "lvedv_ml", "lvm_g"], "metric": "r2",
                            "value": [0.25, 0.4, 0.3]})
    table = fraction_of_ceiling(metrics, found)
    assert list(table["target"]) == ["lvef_pct", "lvedv_ml"]       # targets with a ceiling
    assert table["fraction_of_ecg_estimate"].tolist() == pytest.approx([0.5, 0.5])


def test_learned_r2_is_shown_beside_the_ceilings_with_the_fraction_reached() -> None:
    from ecgcmr.synth.ceilings import beside_ceilings

    r2 = pd.DataFrame({("dual", "probe"): [0.4, 0.1], ("classical", "probe"): [0.5, 0.2]},
                      index=pd.Index(["lvedv_ml", "lvef_pct"], name="target"))
    ceilings = pd.DataFrame({"target": ["lvef_pct", "lvedv_ml"], "ecg_estimate": [0.4, 0.8],
                             "upper_bound": [0.6, 1.0]})
    out = beside_ceilings(r2, ceilings)
    assert out.loc["lvedv_ml", "dual probe / ecg_estimate"] == pytest.approx(0.5)
    assert out.loc["lvef_pct", "classical probe / ecg_estimate"] == pytest.approx(0.5)
    assert out.loc["lvef_pct", "upper_bound"] == 0.6 and out.loc["lvedv_ml", "dual probe"] == 0.4
    assert beside_ceilings(r2, None) is r2                    # real data: no ceilings
