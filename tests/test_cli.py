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
    # commas make a grid axis, unless the value is quoted: then it is one string
    assert parse_assignments(["seed=1,2", "method=dual,ed", 'balanced_seeds="0,1,2"']) == {
        "seed": [1, 2], "method": ["dual", "ed"], "balanced_seeds": "0,1,2"}
    with pytest.raises(SystemExit):
        parse_assignments(["nothing"])


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


def test_parameters_from_the_command_line_get_their_notebook_types():
    from ecgcmr.runs import check_params

    types = {"use_pretrained": "bool", "finetune_encoder": "bool", "seed": "int",
             "notch_hz": "Optional[float]", "n_subjects": "Optional[int]",
             "cmr_augment": "Optional[str]", "run_dir": "str"}
    # "false" typed on the command line must not reach `if use_pretrained:` as a true string
    params = check_params({"use_pretrained": "false", "finetune_encoder": "Yes", "seed": 3},
                          types)
    assert params == {"use_pretrained": False, "finetune_encoder": True, "seed": 3}
    assert check_params({"use_pretrained": True}, types) == {"use_pretrained": True}
    with pytest.raises(ValueError, match="use_pretrained is a yes/no flag"):
        check_params({"use_pretrained": "maybe"}, types)
    # None is an optional parameter's "not set"; "none" stays a value (cmr_augment's)
    assert check_params(parse_assignments(["n_subjects=None", "notch_hz=60", "cmr_augment=none",
                                           "run_dir=2024"]), types) == {
        "n_subjects": None, "notch_hz": 60.0, "cmr_augment": "none", "run_dir": "2024"}
    with pytest.raises(ValueError, match="seed .* cannot be None"):
        check_params({"seed": None}, types)
    with pytest.raises(ValueError, match="n_subjects is Optional\\[int\\], got 'many'"):
        check_params({"n_subjects": "many"}, types)
    with pytest.raises(ValueError, match="no notebook declares the parameter"):
        check_params({"no_such_parameter": 1}, types)


def test_every_notebook_parameter_can_be_set_from_the_command_line() -> None:
    """Each parameter's default, as text on the command line, comes back as its own value
    (and None where it is optional)."""
    import papermill as pm

    from ecgcmr.runs import check_params, notebook_series, parameter_types

    types = parameter_types()
    for nb in notebook_series():
        for name, info in pm.inspect_notebook(str(nb)).items():
            default = eval(info["default"])   # a literal: the tests of test_notebooks.py
            assert check_params(parse_assignments([f"{name}={info['default']}"]), types) == {
                name: default}, (nb.name, name)
            if types[name].startswith("Optional["):
                assert check_params(parse_assignments([f"{name}=None"]), types) == {name: None}


def test_reproduce_refuses_a_bad_parameter_before_running_anything(tmp_path: Path) -> None:
    for bad in ("no_such_parameter=1", "seed=many", "seed=1,x"):
        with pytest.raises(SystemExit, match="ecgcmr: error: .*(no_such_parameter|seed)"):
            main(["reproduce", "--profile", "tiny", "--run-dir", str(tmp_path / "r"),
                  "--set", bad])
    assert not (tmp_path / "r").exists()


def test_reproduce_compare_without_shipped_weights_says_what_is_shipped(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no pretrained weights are shipped for profile 'tiny' "
                                         r"\(shipped: \['teaching'\]\)"):
        main(["reproduce", "--profile", "tiny", "--compare", "--run-dir", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
