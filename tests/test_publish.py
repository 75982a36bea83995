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
