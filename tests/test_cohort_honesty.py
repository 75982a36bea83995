"""The synthetic cohort is an honest test bed: the CMR determines the phenotypes almost
exactly, the ECG only partially. Both checked with simple cross-validated models, so the
generator can be neither trivial (ECG = phenotypes) nor noise (ECG unrelated to anatomy)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ecgcmr.constants import LABEL_LV_BLOOD, LABEL_LV_MYO, LABEL_RV_BLOOD
from ecgcmr.ecg_measurements import measure_ecg
from ecgcmr.synth.cohort import cohort_spec, make_subject

N_SUBJECTS = 300
TARGETS = ("lvedv_ml", "lvesv_ml", "lvm_g", "rvedv_ml")


@pytest.fixture(scope="module")
def cohort_features() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    spec = cohort_spec("tiny", seed=11, n_subjects=N_SUBJECTS)
    cmr_rows, ecg_rows, targets = [], [], []
    for i in range(N_SUBJECTS):
        s = make_subject(spec, i)
        cmr = s["cmr"]
        cmr_rows.append({f"{phase}_{label}": int((labels == value).sum())
                         for phase, labels in (("ed", cmr.labels_ed), ("es", cmr.labels_es))
                         for label, value in (("lv", LABEL_LV_BLOOD), ("myo", LABEL_LV_MYO),
                                              ("rv", LABEL_RV_BLOOD))})
        ecg_rows.append(measure_ecg(s["ecg"], fs=500))
        targets.append(s["phenotypes"])
    return pd.DataFrame(cmr_rows), pd.DataFrame(ecg_rows), pd.DataFrame(targets)


def _cv_r2(features: pd.DataFrame, target: pd.Series) -> float:
    x = features.apply(pd.to_numeric, errors="coerce")
    x = x.loc[:, x.notna().mean() > 0.8]           # features the measurer mostly finds
    x = x.fillna(x.median())
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    pred = cross_val_predict(model, x, target, cv=KFold(5, shuffle=True, random_state=0))
    return float(r2_score(target, pred))


def test_cmr_labels_explain_the_phenotypes(cohort_features) -> None:
    cmr, _, y = cohort_features
    for target in TARGETS:
        assert _cv_r2(cmr, y[target]) > 0.97, target


def test_ecg_hints_at_the_phenotypes_but_does_not_determine_them(cohort_features) -> None:
    cmr, ecg, y = cohort_features
    r2 = {t: _cv_r2(ecg, y[t]) for t in TARGETS}
    print("ECG ridge R2:", {k: round(v, 3) for k, v in r2.items()})
    assert r2["lvm_g"] > 0.10, r2          # voltage carries LV mass: not noise
    assert r2["lvedv_ml"] > 0.05, r2       # QRS width / voltage carry size
    assert max(r2.values()) < 0.85, r2     # but the ECG is no CMR: not trivial
    assert np.mean(list(r2.values())) < np.mean([_cv_r2(cmr, y[t]) for t in TARGETS]) - 0.2
