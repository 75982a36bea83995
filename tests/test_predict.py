"""`ecgcmr predict`: one row per recording, QC rows for bad records, the synthetic-data line,
and predictions equal to notebook 03's linear probes for the same checkpoint and subjects.

The checkpoint is stage B trained for one epoch on the shared 16-subject tiny cohort."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ecgcmr.cli import main
from ecgcmr.config import get_profile
from ecgcmr.constants import PHENOTYPES
from ecgcmr.data import build_cache, read_manifest
from ecgcmr.evaluate.phenotypes import linear_probes
from ecgcmr.predict import (
    SYNTHETIC_WARNING,
    apply_head,
    fit_head,
    load_encoder,
    read_head,
    read_predictions,
    training_data,
)
from ecgcmr.pretrain import embed_ecg, load_ecg_encoder, train_stage, with_epochs

TINY = get_profile("tiny")


@pytest.fixture(scope="module")
def trained(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("predict")
    manifest = read_manifest(tiny_cohort)
    cache = build_cache(manifest, root / "cache", TINY.cache_spec(), progress=False)
    cfg = with_epochs(TINY.stage_config("ecg", seed=0, batch_size=8), 1)
    checkpoint = train_stage(cache, cfg, root / "B", progress=False).out_dir / "best.pt"
    # notebook 03's probe: the cache embedded with the checkpoint, linear_probes on every
    # phenotype (ecgcmr.evaluate.study.phenotype_evaluation)
    features = embed_ecg(load_ecg_encoder(checkpoint), cache)
    probe = linear_probes(features, cache.rows(), list(PHENOTYPES), seed=0)
    return {"root": root, "cache": cache, "checkpoint": checkpoint, "manifest": manifest,
            "features": features, "probe": probe}


def _predict(trained: dict[str, object], out: Path, *ecg: Path | str,
             head: Path | None = None) -> int:
    args = ["predict", "--checkpoint", str(trained["checkpoint"]), "--out", str(out),
            "--cache-dir", str(trained["cache"].root), "--device", "cpu", "--no-progress",
            "--ecg", *map(str, ecg)]
    return main(args + (["--head", str(head)] if head else []))


def test_predict_writes_a_row_per_recording_equal_to_the_probe(
        trained: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = trained["manifest"]
    ecg_dir = Path(manifest["ecg_path"].iloc[0]).parent
    out = tmp_path / "predictions.csv"
    assert _predict(trained, out, ecg_dir) == 0
    printed = capsys.readouterr().out
    assert SYNTHETIC_WARNING in printed and '"config"' in printed      # the card is printed
    assert out.read_text().splitlines()[0] == f"# ecgcmr predict: {SYNTHETIC_WARNING}"
    card = json.loads((tmp_path / "predictions.model_card.json").read_text())
    assert card["synthetic"] and card["encoder"]["config"]["stage"] == "ecg"
    table = read_predictions(out)
    assert sorted(table["subject_id"]) == sorted(manifest["subject_id"])   # one row each
    assert table["qc_ok"].all() and set(PHENOTYPES) <= set(table.columns)
    # every probe prediction (the test split) is predicted from the raw record
    probe = trained["probe"]
    got = table.melt(id_vars="subject_id", value_vars=list(PHENOTYPES), var_name="target",
                     value_name="predicted")
    merged = probe.merge(got, on=["subject_id", "target"])
    assert len(merged) == len(probe) > 0
    # equal up to the last rounding of the final dot product, whose BLAS kernel rounds a row
    # by its position in the matrix (the embeddings themselves are bit-identical, below)
    np.testing.assert_allclose(merged["predicted"], merged["y_pred"], rtol=1e-12, atol=0)
    # the same subjects in the probe's order give the probe's numbers exactly
    test_ids = list(dict.fromkeys(probe["subject_id"]))
    records = manifest.set_index("subject_id").loc[test_ids, "ecg_path"]
    again = tmp_path / "test_split.csv"
    assert _predict(trained, again, *records, head=tmp_path / "head.json") == 0
    exact = read_predictions(again).melt(id_vars="subject_id", value_vars=list(PHENOTYPES),
                                         var_name="target", value_name="predicted")
    merged = probe.merge(exact, on=["subject_id", "target"])
    assert len(merged) == len(probe)
    np.testing.assert_array_equal(merged["predicted"].to_numpy(), merged["y_pred"].to_numpy())


def test_the_head_is_the_probe_and_is_tied_to_its_encoder(
        trained: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    features, probe = trained["features"], trained["probe"]
    head = fit_head(features, trained["cache"].rows())
    assert list(head["targets"]) == list(PHENOTYPES)
    test = features[features["split"] == "test"]
    applied = apply_head(head, test).melt(id_vars="subject_id", var_name="target",
                                          value_name="applied")
    merged = probe.merge(applied, on=["subject_id", "target"])
    np.testing.assert_array_equal(merged["applied"].to_numpy(), merged["y_pred"].to_numpy())
    alphas = probe.groupby("target")["alpha"].first()
    assert all(head["targets"][t]["alpha"] == alphas[t] for t in PHENOTYPES)
    # a head written for one encoder is refused with another
    head_path = tmp_path / "head.json"
    record = trained["manifest"]["ecg_path"].iloc[0]
    assert _predict(trained, tmp_path / "p.csv", record, head=head_path) == 0
    assert read_head(head_path)["preprocessing"]["dtype"] == "float16"
    other = tmp_path / "other.pt"
    cfg = with_epochs(TINY.stage_config("ecg", seed=1, batch_size=8), 1)
    shutil.copy(train_stage(trained["cache"], cfg, tmp_path / "B1", progress=False).out_dir
                / "best.pt", other)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(other), "--ecg", record, "--out",
                 str(tmp_path / "q.csv"), "--head", str(head_path), "--device", "cpu"]) == 2
    assert "another encoder" in capsys.readouterr().err


def test_a_bad_record_gets_a_qc_row_and_the_others_are_predicted(
        trained: dict[str, object], tmp_path: Path) -> None:
    folder = tmp_path / "ecgs"
    folder.mkdir()
    for path in trained["manifest"]["ecg_path"].head(3):
        for f in Path(path).parent.glob(Path(path).name + ".*"):
            shutil.copy(f, folder / f.name)
    flat = sorted(folder.glob("*.dat"))[1]
    flat.write_bytes(bytes(flat.stat().st_size))                    # every lead flat
    (tmp_path / "scan.xml").write_text("<RestingECG/>")
    out = tmp_path / "predictions.csv"
    assert _predict(trained, out, folder, tmp_path / "scan.xml") == 0
    table = read_predictions(out).set_index("subject_id")
    assert len(table) == 4 and int(table["qc_ok"].sum()) == 2
    bad = table.loc[flat.stem]
    assert not bad["qc_ok"] and "flat" in bad["qc_reason"] and bad[list(PHENOTYPES)].isna().all()
    xml = table.loc["scan.xml"]
    assert not xml["qc_ok"] and "ecgcmr convert ecg" in xml["qc_reason"]
    assert table.loc[table["qc_ok"], list(PHENOTYPES)].notna().all().all()


def test_shipped_and_run_weights_tell_what_they_were_trained_on(tmp_path: Path) -> None:
    from ecgcmr.pretrained import set_dir

    encoder, card = load_encoder(set_dir("teaching", 0) / "stage_b_ecg_mae.pt")
    assert card["synthetic"] and card["shipped"]["profile"] == "teaching"
    assert card["shipped"]["seed"] == 0 and "not for clinical use" in card["shipped"]["use"]
    assert card["config"]["stage"] == "ecg" and len(card["weights_digest"]) == 64
    run = tmp_path / "run"
    (run / "checkpoints" / "align").mkdir(parents=True)
    (run / "params.yaml").write_text("manifest: ''\nprofile: tiny\n")
    assert training_data(run / "checkpoints" / "align" / "best.pt")["synthetic"] is True
    (run / "params.yaml").write_text(f"manifest: {tmp_path / 'real' / 'manifest.csv'}\n")
    assert training_data(run / "checkpoints" / "align" / "best.pt")["synthetic"] is False
    assert training_data(tmp_path / "elsewhere.pt")["synthetic"] is None
