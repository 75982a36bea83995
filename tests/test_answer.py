"""The generated answer paragraph says what the tables say."""

from __future__ import annotations

import pandas as pd

from ecgcmr.evaluate.answer import answer


def _metrics() -> pd.DataFrame:
    values = {("dual", "lvef_pct"): (0.30, 0.32), ("ed", "lvef_pct"): (0.20, 0.22),
              ("classical", "lvef_pct"): (0.25, 0.25), ("dual", "lvedv_ml"): (0.50, 0.52),
              ("ed", "lvedv_ml"): (0.49, 0.51), ("classical", "lvedv_ml"): (0.60, 0.60)}
    return pd.DataFrame([{"method": m, "seed": s, "model": "probe", "target": t, "metric": "r2",
                          "value": v[s]} for (m, t), v in values.items() for s in (0, 1)])


def _paired() -> pd.DataFrame:
    rows = [("lvef_pct", "ed", 0.10, 0.04, 0.16), ("lvedv_ml", "ed", 0.01, -0.02, 0.04),
            ("lvef_pct", "es", 0.01, -0.03, 0.05), ("lvedv_ml", "es", -0.01, -0.05, 0.03)]
    return pd.DataFrame([{"model": "probe", "target": t, "reference": "dual", "versus": v,
                          "seed": None, "n_seeds": 2, "metric": "r2", "diff": d,
                          "ci_low": lo, "ci_high": hi} for t, v, d, lo, hi in rows])


def test_best_method_per_target_and_the_seed_count() -> None:
    text = answer(_metrics())
    assert "mean over 2 seeds" in text
    assert "LVEDV classical (0.60)" in text and "LVEF dual (0.31)" in text


def test_paired_verdicts_follow_the_intervals() -> None:
    text = answer(_metrics(), _paired())
    ed = text[text.index("dual − ed"):text.index("dual − es")]
    assert "LVEF +0.100 [+0.040, +0.160]" in ed
    assert "the interval excludes 0 for LVEF (higher)" in ed and "LVEDV (" not in ed
    es = text[text.index("dual − es"):]
    assert "no interval excludes 0" in es


def test_share_of_the_ceiling_and_missing_parts_left_out() -> None:
    ceilings = pd.DataFrame([{"method": m, "seed": 0, "model": "probe", "target": t,
                              "fraction_of_ecg_estimate": f}
                             for m, t, f in (("dual", "lvef_pct", 0.5), ("dual", "lvedv_ml", 0.8),
                                             ("ed", "lvef_pct", 0.25),
                                             ("ed", "lvedv_ml", 0.75))])
    text = answer(_metrics(), None, ceilings)
    assert "(LVEDV / LVEF, %): dual 80 / 50; ed 75 / 25." in text
    assert "dual − ed" not in text                      # no paired table: no such sentence
    assert answer(_metrics()[lambda d: d["model"] == "mlp"]) == ""
