"""The ``ecgcmr`` command: synth, validate, preprocess; clear errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ecgcmr.cli import main, parse_assignments


def test_synth_validate_preprocess(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cohort"
    assert main(["synth", "--profile", "tiny", "--out", str(out), "--n", "4", "--seed", "1"]) == 0
    assert len(pd.read_csv(out / "manifest.csv")) == 4
    assert main(["validate", str(out / "manifest.csv")]) == 0
    assert "4 subjects, valid" in capsys.readouterr().out
    assert main(["preprocess", "--manifest", str(out / "manifest.csv"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "4 subjects ok, 0 rejected" in capsys.readouterr().out


def test_bad_manifest_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    pd.DataFrame({"subject_id": ["a", "a"], "ecg_path": ["x", "y"], "cmr_ed_path": ["x", "y"],
                  "cmr_es_path": ["x", "y"]}).to_csv(bad, index=False)
    proc = subprocess.run([sys.executable, "-m", "ecgcmr", "validate", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "appears 2 times" in proc.stderr and "file not found" in proc.stderr


def test_parse_assignments() -> None:
    assert parse_assignments(["seed=1", "notch_hz=60.0", "manifest=a/b.csv", "flag=True"]) == {
        "seed": 1, "notch_hz": 60.0, "manifest": "a/b.csv", "flag": True}
    with pytest.raises(SystemExit):
        parse_assignments(["nothing"])


@pytest.mark.slow
def test_pretrain_and_embed_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    cohort = tmp_path / "data" / "synthetic" / "tiny-n24-seed0"
    common = ["--profile", "tiny", "--data-dir", data, "--n-subjects", "24"]
    assert main(["synth", "--profile", "tiny", "--n", "24", "--out", str(cohort)]) == 0
    assert main(["preprocess", "--manifest", str(cohort / "manifest.csv"), "--profile", "tiny",
                 "--data-dir", data]) == 0
    assert main(["pretrain", "cmr", "--phase", "ed", "--epochs", "1", "--num-workers", "0",
                 *common]) == 0
    ed = capsys.readouterr().out.split("checkpoint ")[-1].strip()
    assert Path(ed).is_file()
    assert main(["pretrain", "align", "--method", "ed", "--init-ed", ed, "--epochs", "1",
                 "--num-workers", "0", "--out", str(tmp_path / "C"), *common]) == 0
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--checkpoint", str(tmp_path / "C" / "best.pt"), "--out", str(out),
                 *common]) == 0
    assert len(pd.read_parquet(out)) == 24


def test_yes_no_parameters_from_the_command_line_become_booleans():
    from ecgcmr.runs import coerce_flags

    defaults = {"use_pretrained": "False", "finetune_encoder": "False", "seed": "0"}
    # "false" typed on the command line must not reach `if use_pretrained:` as a true string
    params = coerce_flags({"use_pretrained": "false", "finetune_encoder": "Yes", "seed": 3},
                          defaults)
    assert params == {"use_pretrained": False, "finetune_encoder": True, "seed": 3}
    assert coerce_flags({"use_pretrained": True}, defaults) == {"use_pretrained": True}
    with pytest.raises(ValueError, match="use_pretrained is a yes/no flag"):
        coerce_flags({"use_pretrained": "maybe"}, defaults)
