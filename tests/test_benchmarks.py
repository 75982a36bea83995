"""The benchmark scripts run end to end at their smallest settings and write sane CSVs.

Nothing here is timed: the numbers only have to exist and be positive (speed targets live in
the benchmark output, not in the tests).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():  # noqa: ANN201
    """Imports a benchmark script by name (they import each other as siblings)."""
    sys.path.insert(0, str(BENCHMARKS))
    yield importlib.import_module
    sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def tiny_cache(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ecgcmr.config import get_profile
    from ecgcmr.data import build_cache, read_manifest

    out = tmp_path_factory.mktemp("bench") / "cache"
    build_cache(read_manifest(tiny_cohort), out, get_profile("tiny").cache_spec(), progress=False)
    return out


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / f"{name}-tiny-cpu.csv")


def _positive(table: pd.DataFrame, columns: list[str]) -> None:
    assert set(columns) <= set(table.columns), set(columns) - set(table.columns)
    assert (table[columns] > 0).all().all(), table[columns]


def test_preprocessing(bench, tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bench("preprocessing").main(["--manifest", str(tiny_cohort), "--n", "4", "--workers", "1",
                                 "--out", str(tmp_path)])
    table = _read(tmp_path, "preprocessing")
    _positive(table, ["records", "median_ms_per_record", "records_per_s",
                      "records_per_s_per_worker"])
    assert any(table["part"].str.startswith("ECG chain"))
    assert any(table["part"].str.startswith("CMR chain"))
    assert any(table["part"].str.startswith("preprocess_subject"))


def test_data_pipeline(bench, tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bench("data_pipeline").main(["--manifest", str(tiny_cohort), "--workers", "0,1",
                                 "--samples", "16", "--out", str(tmp_path)])
    pipe, raw = _read(tmp_path, "data_pipeline"), _read(tmp_path, "data_pipeline_raw")
    _positive(pipe, ["samples", "first_batch_s", "samples_per_s", "ceiling_rows_per_s"])
    assert len(pipe) == 3 * 2 * 2                      # stages x augment x workers
    _positive(raw, ["rows", "MB", "seconds", "rows_per_s", "MB_per_s"])
    assert set(raw["order"]) == {"sequential", "random"} and set(raw["pass"]) == {"first", "warm"}
    assert raw["resident_pct"].dropna().between(0, 100).all()


def test_train_step(bench, tiny_cache: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bench("train_step").main(["--cache", str(tiny_cache), "--steps", "1", "--warmup", "0",
                              "--batch", "4", "--out", str(tmp_path)])
    table = _read(tmp_path, "train_step")
    assert list(table["stage"]) == ["A cmr", "B ecg", "C align"]
    assert (table["data"] == "cache").all()
    _positive(table, ["forward_ms", "backward_ms", "optim_ms", "step_ms", "samples_per_s",
                      "fwd_gflop_per_sample", "train_gflop_per_sample", "achieved_gflops"])
    assert (table["data_ms"] >= 0).all()
    assert (table["train_gflop_per_sample"] > table["fwd_gflop_per_sample"]).all()
    assert table["mfu_pct"].isna().all()               # CPU peak unknown unless given


def test_convergence(bench, tiny_cache: Path, tmp_path: Path) -> None:  # noqa: ANN001
    table = bench("convergence").main(["--cache", str(tiny_cache), "--profile", "tiny",
                                       "--method", "ed", "--epochs", "1", "--patience", "1",
                                       "--ecg-epochs", "2", "--doubled-patience", "2",
                                       "--out", str(tmp_path)])
    stage_b, runs, diff = table.iloc[0], table.iloc[1:3], table.iloc[3]
    assert (stage_b["stage"], stage_b["epochs_allowed"]) == ("B", 2)
    assert stage_b["epochs_run"] <= 2 and stage_b["patience"] == 1
    assert list(runs["epochs_allowed"]) == [1, 2] and list(runs["patience"]) == [1, 2]
    assert (runs["epochs_run"] <= runs["epochs_allowed"]).all()
    for target in ("lvedv_ml", "lvef_pct"):
        assert diff[f"r2_{target}"] == pytest.approx(
            runs[f"r2_{target}"].iloc[1] - runs[f"r2_{target}"].iloc[0])
    assert (tmp_path / "convergence-tiny-ed-seed0-e1-p1-p2x2-b2.csv").is_file()


def test_peak_table_matches_device_names_by_their_words(bench) -> None:  # noqa: ANN001
    train_step = bench("train_step")
    peak = train_step.peak_tflops
    # every entry is reached by a name holding its words, and the PCIe H100 (fewer SMs, lower
    # clocks) is not mistaken for the SXM one, whose words it also contains
    for keys, tflops in train_step.PEAK_BF16_TFLOPS:
        assert peak("NVIDIA " + " ".join(keys).lower()) == tflops
    assert peak("NVIDIA H100 PCIe") < peak("NVIDIA H100 80GB HBM3")
    assert peak("NVIDIA GeForce RTX 4090") is None


def test_memory(bench, tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bench("memory").main(["--manifest", str(tiny_cohort), "--stages", "ecg", "--steps", "1",
                          "--n", "4", "--out", str(tmp_path)])
    table = _read(tmp_path, "memory")
    assert list(table["measurement"]) == ["train step B ecg", "build cache", "iterate dataset"]
    _positive(table, ["baseline_rss_mb", "peak_rss_mb"])
    assert (table["peak_rss_mb"] >= table["baseline_rss_mb"]).all()


def test_train_step_modes_and_encoder_alone(bench, tmp_path: Path) -> None:  # noqa: ANN001
    bench("train_step").main(["--stages", "ecg_encoder,cmr", "--modes", "eager,channels_last",
                              "--steps", "1", "--warmup", "0", "--batch", "2",
                              "--out", str(tmp_path)])
    table = _read(tmp_path, "train_step")
    assert list(zip(table["stage"], table["mode"], strict=True)) == [
        ("- ecg_encoder", "eager"), ("- ecg_encoder", "channels_last"),
        ("A cmr", "eager"), ("A cmr", "channels_last")]
    _positive(table, ["step_ms", "samples_per_s", "train_gflop_per_sample"])
    with pytest.raises(SystemExit, match="unknown"):
        bench("train_step").main(["--modes", "eager,fast", "--out", str(tmp_path)])


def test_memory_stand_in_rows(bench, tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bench("memory").main(["--manifest", str(tiny_cohort), "--stages", "ecg", "--steps", "1",
                          "--stand-in", "--n", "20,40", "--out", str(tmp_path)])
    table = _read(tmp_path, "memory")
    assert list(table["measurement"]) == ["train step B ecg"] + [
        "build cache (stand-in)", "iterate dataset (stand-in)"] * 2
    cache_rows = table.iloc[1:]
    assert list(cache_rows["n_subjects"]) == [20, 20, 40, 40]
    # more subjects than the 16-subject cohort: the stand-in rows repeat its files
    assert (cache_rows["mapped_mb"].iloc[2:].to_numpy() > cache_rows["mapped_mb"].iloc[:2]).all()


def test_evaluation(bench, tiny_cache: Path, tmp_path: Path) -> None:  # noqa: ANN001
    table = bench("evaluation").main(["--cache", str(tiny_cache), "--profile", "tiny",
                                      "--out", str(tmp_path)])
    assert set(table["threads"]) == {"one thread", "default threads"}
    assert table.groupby("threads").size().tolist() == [4, 4]
    assert (table["seconds"] >= 0).all()
    assert (tmp_path / "evaluation-tiny-cpu.csv").is_file()


def test_embedding(bench, tiny_cache: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from ecgcmr.data.cache import open_cache

    table = bench("embedding").main(["--cache", str(tiny_cache), "--profile", "tiny",
                                     "--threads", "1", "--batch-sizes", "4,16",
                                     "--out", str(tmp_path)])
    assert table.groupby("batch_size")["part"].apply(list).to_dict() == {
        b: ["embed_ecg", "read the cache", "forward pass"] for b in (4, 16)}
    assert (table["subjects"] == len(open_cache(tiny_cache).rows())).all()
    _positive(table, ["seconds", "ms_per_ecg", "encoder_values"])
    assert (tmp_path / "embedding-tiny-t1-cpu.csv").is_file()


def test_allocator(bench, tmp_path: Path) -> None:  # noqa: ANN001
    table = bench("allocator").main(["--profile", "tiny", "--processes", "2", "--rounds", "1",
                                     "--batches", "1", "--out", str(tmp_path)])
    assert sorted(table["setting"].unique()) == ["default", "kernel allocator"]
    assert len(table) == 4   # 2 settings x 2 processes x 1 round
    _positive(table, ["ms_per_ecg"])
    assert (table["page_faults"] >= 0).all()
    assert (tmp_path / "allocator-tiny-p2-cpu.csv").is_file()
