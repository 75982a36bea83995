"""ECG-only and CMR-only cohorts as first-class manifests: kinds, validation, the cache (an
ECG-only subject never reaches a CMR stage), folders without CMR, and notebooks 03 and 04
evaluating an ECG-only cohort with an encoder trained on another (paired) cohort: external
validation.

The encoder is stage B trained for one epoch on the shared 16-subject paired tiny cohort; the
ECG-only cohort is a second synthetic cohort (another seed) reduced to its ECGs + a table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecgcmr.cli import main
from ecgcmr.config import get_profile
from ecgcmr.constants import CONDITIONS, COVARIATES, PHENOTYPES
from ecgcmr.data import build_cache, open_cache, read_manifest
from ecgcmr.data.dataset import PairedDataset
from ecgcmr.data.manifest import ManifestError, infer_kind
from ecgcmr.errors import DataError
from ecgcmr.synth.cohort import cohort_spec, generate_cohort

TINY = get_profile("tiny")


@pytest.fixture(scope="module")
def ecg_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ECG-only manifest built by `ecgcmr manifest folders --ecg-dir` (no --cmr-dir) from a
    second synthetic cohort's ECG folder, with its phenotypes and outcomes joined from a
    table."""
    root = tmp_path_factory.mktemp("ecg_only")
    paired = generate_cohort(root / "cohort", cohort_spec(TINY, seed=11, n_subjects=20),
                             workers=1, progress=False)
    table = root / "phenotypes.csv"
    outcomes = [f"{c}_{k}" for c in CONDITIONS for k in ("ever", "event", "time_years")]
    pd.read_csv(paired, dtype={"subject_id": str})[
        ["subject_id", *PHENOTYPES, *COVARIATES, *outcomes]].to_csv(table, index=False)
    assert main(["manifest", "folders", "--ecg-dir", str(root / "cohort" / "ecg"),
                 "--table", str(table), "--out", str(root / "manifest")]) == 0
    return root / "manifest" / "manifest.csv"


def test_folders_without_cmr_make_an_ecg_only_manifest(ecg_only: Path) -> None:
    raw = pd.read_csv(ecg_only, dtype={"subject_id": str})
    assert [c for c in raw.columns if c.endswith("_path")] == ["ecg_path"]
    df = read_manifest(ecg_only)
    assert df.attrs["kind"] == "ecg_only" and len(df) == 20
    assert df["lvef_pct"].notna().all()


def test_an_ecg_only_manifest_validates(ecg_only: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ecg_only)]) == 0
    assert "20 subjects, valid (ecg_only)" in capsys.readouterr().out
    assert main(["validate", str(ecg_only), "--kind", "paired"]) == 2   # no CMR columns
    assert "cmr_ed_path]: required column is missing" in capsys.readouterr().err
    raw = pd.read_csv(ecg_only, dtype={"subject_id": str})
    raw.loc[3, "ecg_path"] = np.nan                                       # a row without ECG
    raw.to_csv(ecg_only.with_name("holes.csv"), index=False)
    with pytest.raises(ManifestError, match=r"\[ecg_path\]: path is empty"):
        read_manifest(ecg_only.with_name("holes.csv"))


def test_the_kind_is_inferred_or_stated() -> None:
    ids = {"subject_id": ["a", "b"]}
    assert infer_kind(pd.DataFrame({**ids, "ecg_path": ["e/a", "e/b"]})) == "ecg_only"
    assert infer_kind(pd.DataFrame({**ids, "ecg_path": ["e/a", "e/b"], "cmr_ed_path": [None] * 2,
                                    "cmr_es_path": [None] * 2})) == "ecg_only"
    assert infer_kind(pd.DataFrame({**ids, "ecg_path": [None] * 2, "cmr_ed_path": ["x", "y"],
                                    "cmr_es_path": ["x", "y"]})) == "cmr_only"
    assert infer_kind(pd.DataFrame({**ids, "ecg_path": ["e/a", None], "cmr_ed_path": ["x", "y"],
                                    "cmr_es_path": ["x", "y"]})) == "paired"   # a hole: refused
    assert infer_kind(pd.DataFrame({**ids, "ecg_path": ["e/a", "e/b"],
                                    "kind": ["ecg_only"] * 2})) == "ecg_only"
    with pytest.raises(DataError, match="one value for every subject"):
        infer_kind(pd.DataFrame({**ids, "kind": ["ecg_only", "paired"]}))


def test_an_ecg_only_cache_serves_ecgs_and_never_cmr(ecg_only: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cache_dir = tmp_path / "cache"
    assert main(["preprocess", "--manifest", str(ecg_only), "--cache-dir", str(cache_dir),
                 "--profile", "tiny"]) == 0
    assert "(ecg_only): 20 subjects ok, 0 rejected" in capsys.readouterr().out
    cache = open_cache(cache_dir, read_manifest(ecg_only))       # matches its manifest
    assert cache.index["ok"].all() and cache.index["has_ecg"].all()
    assert not cache.index["has_cmr"].any()
    assert len(PairedDataset(cache, None, fields=("ecg",))) == 20
    for fields in (("ecg", "cmr_ed", "cmr_es"), ("cmr_ed",), ("cmr_es",)):
        assert len(PairedDataset(cache, None, fields=fields)) == 0, fields
    assert not np.any(cache.cmr_ed[:]) and np.abs(cache.ecg[0]).max() > 0


def test_in_a_mixed_cache_a_cmr_stage_sees_only_subjects_with_cmr(tiny_cohort: Path,
                                                                 tmp_path: Path) -> None:
    raw = read_manifest(tiny_cohort).head(6)                       # absolute paths
    for col in ("cmr_ed_path", "cmr_es_path", "cmr_ed_seg_path", "cmr_es_seg_path"):
        raw.loc[3:, col] = None                                    # 3 subjects lose their CMR
    raw.assign(kind="ecg_only").to_csv(tmp_path / "mixed.csv", index=False)
    df = read_manifest(tmp_path / "mixed.csv")
    assert df.attrs["kind"] == "ecg_only"
    cache = build_cache(df, tmp_path / "cache", TINY.cache_spec(), progress=False)
    assert cache.index["ok"].all()
    assert cache.index["has_cmr"].tolist() == [True] * 3 + [False] * 3
    cmr = PairedDataset(cache, None, fields=("ecg", "cmr_ed", "cmr_es"))
    assert cmr.subject_ids == raw["subject_id"].head(3).tolist()
    assert all(float(cmr[i][1].abs().max()) > 0 for i in range(len(cmr)))   # real volumes
    assert len(PairedDataset(cache, None, fields=("ecg",))) == 6


def test_public_cmr_only_manifests_validate_and_preprocess(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from writers.public_layouts import box_phantom, write_acdc_patient, write_mnms_subject

    from ecgcmr.convert.public_cmr import convert_acdc, convert_mnms

    ph = box_phantom(ed_index=0, es_index=4)
    for i in range(3):
        write_acdc_patient(tmp_path / "acdc" / "training", f"patient{i:03d}", ph.cine,
                           ph.labels, ph.affine, ph.ed_index + 1, ph.es_index + 1)
        write_mnms_subject(tmp_path / "mnms" / "Training" / "Labeled", f"A0S9V{i}", ph.cine,
                           ph.labels, ph.affine, ph.ed_index, ph.es_index,
                           csv_path=tmp_path / "mnms" / "info.csv")
    acdc = convert_acdc(tmp_path / "acdc", tmp_path / "acdc_out")
    mnms = convert_mnms(tmp_path / "mnms", tmp_path / "mnms" / "info.csv", tmp_path / "mnms_out")
    for manifest in (acdc, mnms):
        assert read_manifest(manifest).attrs["kind"] == "cmr_only"
        assert main(["validate", str(manifest)]) == 0
        assert "3 subjects, valid (cmr_only)" in capsys.readouterr().out
    # no --cmr-only needed any more; the flag stays as an alias
    for flag in ([], ["--cmr-only"]):
        assert main(["preprocess", "--manifest", str(acdc), "--profile", "tiny",
                     "--cache-dir", str(tmp_path / "cache"), *flag]) == 0
        assert "(cmr_only): 3 subjects ok" in capsys.readouterr().out
    cache = open_cache(tmp_path / "cache")
    assert not cache.index["has_ecg"].any() and cache.index["has_cmr"].all()
    assert len(PairedDataset(cache, None, fields=("ecg",))) == 0
    assert len(PairedDataset(cache, None, fields=("cmr_ed",))) == 3


def test_notebooks_03_and_04_evaluate_an_ecg_only_cohort_with_an_encoder_trained_elsewhere(
        tiny_cohort: Path, ecg_only: Path, tmp_path: Path) -> None:
    """External validation: stage B trained (one epoch) on the paired cohort; notebooks 03 and
    04 embed the ECG-only cohort with it and fit their heads there."""
    from ecgcmr.evaluate.phenotypes import linear_probes
    from ecgcmr.pretrain import embed_ecg, load_ecg_encoder, train_stage, with_epochs
    from ecgcmr.runs import notebook_series, run_series

    paired = build_cache(read_manifest(tiny_cohort), tmp_path / "paired_cache",
                         TINY.cache_spec(), progress=False)
    cfg = with_epochs(TINY.stage_config("ecg", seed=0, batch_size=8), 1)
    checkpoint = train_stage(paired, cfg, tmp_path / "B", progress=False).out_dir / "best.pt"
    data = tmp_path / "data"
    assert main(["preprocess", "--manifest", str(ecg_only), "--profile", "tiny",
                 "--data-dir", str(data)]) == 0
    notebooks = [nb for nb in notebook_series() if nb.name[:3] in ("03_", "04_")]
    params = {"profile": "tiny", "manifest": str(ecg_only), "data_dir": str(data),
              "checkpoint": str(checkpoint), "n_boot": 20, "mlp_epochs": 3,
              "with_covariates": False, "classical_baseline": False, "label_fractions": "1.0",
              "balanced_seeds": "0", "n_components": 2, "finetune_encoder": True,
              "finetune_epochs": 1}
    run = tmp_path / "external"
    assert run_series(run, params, notebooks, progress=False) == {
        nb.name: "done" for nb in notebooks}
    assert not (run / "embeddings").exists()          # nothing of this run's own was read
    predictions = pd.read_csv(run / "tables" / "03_predictions.csv", dtype={"subject_id": str})
    probe = predictions[predictions["model"] == "probe"]
    # the checkpoint's encoder was fine-tuned on this cohort too
    assert "mlp-finetuned" in set(predictions["model"])
    cohort_ids = set(read_manifest(ecg_only)["subject_id"])
    assert set(probe["subject_id"]) <= cohort_ids and set(probe["target"]) == set(PHENOTYPES)
    # the same probe, by hand: the ECG-only cache embedded with the checkpoint
    cache = open_cache(next((data / "cache").iterdir()))
    features = embed_ecg(load_ecg_encoder(checkpoint), cache)
    expected = linear_probes(features, cache.rows(), list(PHENOTYPES), seed=0)
    merged = expected.merge(probe, on=["subject_id", "target"], suffixes=("", "_nb"))
    assert len(merged) == len(expected) > 0
    np.testing.assert_allclose(merged["y_pred_nb"], merged["y_pred"], rtol=1e-9)
    # notebook 04: every condition scored (or NaN with its reason: 20 subjects have few cases),
    # its per-subject scores only for this cohort's test subjects
    classification = pd.read_csv(run / "tables" / "04_classification_metrics.csv")
    assert set(classification["condition"]) == set(CONDITIONS)
    scores = pd.read_csv(run / "tables" / "04_predictions.csv", dtype={"subject_id": str})
    assert set(scores["subject_id"]) <= cohort_ids
    survival = pd.read_csv(run / "tables" / "04_survival_metrics.csv")
    assert set(survival["condition"]) == set(CONDITIONS)
