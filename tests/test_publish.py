"""The README's result tables are exactly what `ecgcmr publish` renders from the committed
result files: no hand edit, no stale table survives."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ecgcmr.publish import publish, render
from ecgcmr.synth.ceilings import CEILINGS

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_and_docs_are_what_their_result_files_give() -> None:
    files = [ROOT / "README.md", ROOT / "docs" / "controls.md"]
    assert publish(files, ROOT, check=True) == [], "stale: run `ecgcmr publish` and commit"


def test_a_hand_edit_is_found_and_rewritten(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "ceilings"
    folder.mkdir(parents=True)
    pd.DataFrame({"target": ["lvef_pct"], "metric": "r2", "n": 100, "n_cases": None,
                  **{c: [0.25] for c in CEILINGS},
                  **{f"{c}_ci_{e}": [0.2] for c in CEILINGS for e in ("low", "high")}}
                 ).to_csv(folder / "ceilings-coupling1-n100-seed1.csv", index=False)
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- BEGIN generated: ceilings -->\n| made up | 0.99 |\n"
                   "<!-- END generated: ceilings -->\nend\n")
    assert publish([doc], tmp_path, check=True) == [doc]
    assert publish([doc], tmp_path) == [doc]
    text = doc.read_text()
    assert "0.99" not in text and "| `lvef_pct` | 0.25 | 0.25 [0.20, 0.20]" in text
    assert text.startswith("intro\n") and text.endswith("end\n")
    assert publish([doc], tmp_path, check=True) == []


def test_an_unknown_block_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown generated block"):
        render("<!-- BEGIN generated: nope -->\n<!-- END generated: nope -->\n", tmp_path)


def test_the_comparison_block_renders_the_committed_runs(tmp_path: Path) -> None:
    import numpy as np

    doc = tmp_path / "doc.md"
    doc.write_text("<!-- BEGIN generated: comparison -->\n<!-- END generated: comparison -->\n")
    publish([doc], tmp_path)
    assert "No method comparison is committed yet" in doc.read_text()
    rng = np.random.default_rng(0)
    y = rng.normal(50, 10, 40)
    for method, quality in (("dual", 0.8), ("ed", 0.4)):
        tables = tmp_path / "results" / "comparison" / f"method-{method}_seed-0" / "tables"
        tables.mkdir(parents=True)
        pred = 50 + quality * (y - 50) + rng.normal(0, 5, 40)
        pd.DataFrame({"method": method, "seed": 0, "model": "probe", "target": "lvef_pct",
                      "subject_id": [f"s{i}" for i in range(40)], "y_true": y, "y_pred": pred}
                     ).to_csv(tables / "03_predictions.csv", index=False)
        r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
        pd.DataFrame({"method": [method], "seed": [0], "model": ["probe"],
                      "target": ["lvef_pct"], "metric": ["r2"], "value": [r2]}
                     ).to_csv(tables / "03_phenotype_metrics.csv", index=False)
        # three balanced resamplings of one seed, and a condition without test cases
        pd.DataFrame({"method": method, "seed": 0, "model": "mlp", "metric": "auroc_balanced",
                      "condition": ["cad"] * 3 + ["cardiac_arrest"], "sampling_seed": [0, 1, 2, 0],
                      "value": [0.6, 0.7, 0.8, None]}
                     ).to_csv(tables / "04_classification_metrics.csv", index=False)
        (tables.parent / "provenance.json").write_text(
            '{"03_phenotype_regression.ipynb": {"git_sha": "abcdef123456", "git_dirty": false}}')
    (tmp_path / "results" / "comparison" / "grid.json").write_text(
        '{"command": "ecgcmr reproduce --compare"}')
    publish([doc], tmp_path)
    text = doc.read_text()
    assert "Best method per phenotype (probe R² on the test split, mean over 1 seed): LVEF dual" \
        in text
    assert "dual − ed (paired" in text and "| `lvef_pct` |" in text
    assert "n = 1: one run per cell" in text and "± 0.000" not in text
    # the outcomes: one value per seed (the resamplings' mean), unmeasurable rows named, not shown
    assert "| `cad` | 0.700 | 0.700 |" in text and "(3)" not in text
    assert "too few test cases: `cardiac_arrest`" in text and "| `cardiac_arrest` |" not in text
    assert "from the runs of `ecgcmr reproduce --compare` (code commit abcdef1)" in text
    assert publish([doc], tmp_path, check=True) == []


def test_a_classical_column_without_spread_is_explained_once() -> None:
    from ecgcmr.publish import _seedless_note

    spread = pd.DataFrame({"dual": ["0.45 ± 0.01 (3)"], "classical": ["0.47 ± 0.005 (3)"]})
    none = pd.DataFrame({"dual": ["0.45 ± 0.01 (3)"], "classical": ["0.144 ± 0.000 (3)"]})
    assert _seedless_note(spread) == [] and _seedless_note(spread.drop(columns="classical")) == []
    note = _seedless_note(spread, none)
    assert len(note) == 2 and "`balanced_seeds`" in note[1]
