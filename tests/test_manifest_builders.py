"""Manifest builders: UK Biobank tables (both namings) and bulk files; WFDB + NIfTI folders.

The UKB participants are hand-made so every event and follow-up time is known exactly
(imaging 2015-01-01, censoring 2020-01-01 unless stated; years of 365.25 days).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import wfdb

from ecgcmr.cli import main
from ecgcmr.constants import CONDITIONS, LEADS
from ecgcmr.data.manifest import read_manifest, validate_manifest
from ecgcmr.data.writers import write_nifti
from ecgcmr.errors import DataError
from ecgcmr.manifests import build_folder_manifest, build_ukb_manifest, ukb_table_to_columns
from ecgcmr.manifests.ukb import parse_ukb_column, read_ukb_table
from ecgcmr.synth.cohort import _write_ecg

Y = 365.25
CENSOR = "2020-01-01"
IDP = {24100: 150.0, 24101: 60.0, 24102: 90.0, 24103: 60.0, 24105: 100.0, 24106: 160.0,
       24107: 70.0, 24108: 90.0, 24109: 56.25}

# eid -> logical record: imaging date, covariates (raw UKB codes), diagnoses, deaths
PARTICIPANTS: dict[str, dict] = {
    "1000001": {"img": "2015-01-01", "sex": 1, "age": 60, "bmi": 27.5, "sbp": (120, 130),
                "smoke": 1, "alc": 3, "dx": [("I48", "2016-01-01"), ("I21.0", "2010-05-01"),
                                             ("E119", "2012-01-01")], "death": (None, None)},
    # negative codes; dies 2017-07-01 (second death record later); MI on the day of death
    "1000002": {"img": "2015-01-01", "sex": 0, "age": 55, "bmi": -1, "sbp": (140, None),
                "smoke": -3, "alc": -3, "dx": [("I220", "2017-07-01")],
                "death": ("2017-07-01", "2018-01-01")},
    # HF after the censoring date; cardiac arrest the day before; a placeholder-dated I42
    "1000003": {"img": "2015-01-01", "sex": 1, "age": 70, "bmi": 30.0, "sbp": (150, 150),
                "smoke": 2, "alc": 6, "dx": [("I509", "2021-03-01"), ("I46", "2019-12-31"),
                                             ("I420", "1902-02-02")], "death": (None, None)},
    # AF diagnosed on the imaging day: prevalent
    "1000004": {"img": "2015-01-01", "sex": 0, "age": 50, "bmi": 22.0, "sbp": (110, 112),
                "smoke": 0, "alc": 1, "dx": [("I48", "2015-01-01")], "death": (None, None)},
    # never imaged
    "1000005": {"img": None, "sex": 1, "age": None, "bmi": None, "sbp": (None, None),
                "smoke": None, "alc": None, "dx": [("I48", "2018-01-01")],
                "death": (None, None)},
    # imaged after the censoring date: no follow-up
    "1000006": {"img": "2021-06-01", "sex": 0, "age": 65, "bmi": 25.0, "sbp": (125, 127),
                "smoke": 0, "alc": 2, "dx": [], "death": (None, None)},
}
N_DX = 3


def _ukb_table(naming: str) -> pd.DataFrame:
    """The participants as a UKB export, classic (``24100-2.0``) or RAP (``p24100_i2``)."""
    def col(field: int, instance: int, array: int | None = 0) -> str:
        if naming == "classic":
            return f"{field}-{instance}.{array or 0}"
        inst = "" if field in (31, 41280) else f"_i{instance}"
        return f"p{field}{inst}" + ("" if array is None else f"_a{array}")

    rows = []
    for eid, p in PARTICIPANTS.items():
        row: dict[str, object] = {"eid": eid, col(53, 2, None): p["img"],
                                  col(31, 0, None): p["sex"], col(21003, 2, None): p["age"],
                                  col(21001, 2, None): p["bmi"], col(20116, 2, None): p["smoke"],
                                  col(1558, 2, None): p["alc"],
                                  col(4080, 2, 0): p["sbp"][0], col(4080, 2, 1): p["sbp"][1],
                                  col(40000, 0, None): p["death"][0],
                                  col(40000, 1, None): p["death"][1]}
        imaged = p["img"] is not None
        row.update({col(f, 2, None): v if imaged else None for f, v in IDP.items()})
        row[col(24100, 3, None)] = 999.0        # a repeat-imaging instance: must be ignored
        row[col(4080, 0, 0)] = 200              # the baseline visit: must be ignored
        dx = p["dx"] + [(None, None)] * (N_DX - len(p["dx"]))
        if naming == "classic":
            row.update({f"41270-0.{i}": code for i, (code, _) in enumerate(dx)})
        else:
            codes = [code for code, _ in p["dx"]]
            row["p41270"] = ("[" + ",".join(f'"{c}"' for c in codes) + "]" if eid == "1000003"
                             else "|".join(codes) or None)
        row.update({col(41280, 0, i): day for i, (_, day) in enumerate(dx)})
        rows.append(row)
    return pd.DataFrame(rows)


def _expected_outcomes() -> dict[tuple[str, str], tuple[int, float | None, float | None]]:
    """(eid, condition) -> (ever, event, time) for the conditions a participant touches."""
    healthy = (0, 0, 1826 / Y)   # 2015-01-01 -> 2020-01-01
    exp = {(eid, c): healthy for eid in ("1000001", "1000003", "1000004") for c in CONDITIONS}
    exp.update({("1000002", c): (0, 0, 912 / Y) for c in CONDITIONS})   # died 2017-07-01
    exp.update({
        ("1000001", "af"): (1, 1, 365 / Y),
        ("1000001", "cad"): (1, None, None), ("1000001", "mi"): (1, None, None),
        ("1000002", "mi"): (1, 1, 912 / Y), ("1000002", "cad"): (1, 1, 912 / Y),
        ("1000003", "hf"): (1, 0, 1826 / Y),
        ("1000003", "cardiac_arrest"): (1, 1, 1825 / Y),
        ("1000003", "cardiomyopathy"): (1, None, None),
        ("1000004", "af"): (1, None, None),
    })
    exp.update({("1000005", c): (int(c == "af"), None, None) for c in CONDITIONS})
    exp.update({("1000006", c): (0, None, None) for c in CONDITIONS})
    return exp


def _check_outcomes(cols: pd.DataFrame) -> None:
    by_id = cols.set_index("subject_id")
    for (eid, cond), (ever, event, time) in _expected_outcomes().items():
        if eid not in by_id.index:   # a built manifest holds only the converted subjects
            continue
        got = by_id.loc[eid]
        assert got[f"{cond}_ever"] == ever, (eid, cond)
        if event is None:
            assert pd.isna(got[f"{cond}_event"]) and pd.isna(got[f"{cond}_time_years"]), (eid, cond)
        else:
            assert got[f"{cond}_event"] == event, (eid, cond)
            assert got[f"{cond}_time_years"] == pytest.approx(time, abs=1e-9), (eid, cond)


# ============================================================================================
# UK Biobank: the table
# ============================================================================================


def test_column_names_of_both_namings() -> None:
    assert parse_ukb_column("24100-2.0") == (24100, 2, 0)
    assert parse_ukb_column("41270-0.12") == (41270, 0, 12)
    assert parse_ukb_column("f.24100.2.0") == (24100, 2, 0)
    assert parse_ukb_column("p24100_i2") == (24100, 2, 0)
    assert parse_ukb_column("p4080_i2_a1") == (4080, 2, 1)
    assert parse_ukb_column("participant.p41280_a3") == (41280, 0, 3)
    assert parse_ukb_column("p41270") == (41270, 0, 0)
    assert parse_ukb_column("eid") is None and parse_ukb_column("lvedv") is None


@pytest.mark.parametrize("naming", ["classic", "rap"])
def test_table_to_columns_exact_values(naming: str, tmp_path: Path) -> None:
    path = tmp_path / "ukb.csv"
    _ukb_table(naming).to_csv(path, index=False)
    cols = ukb_table_to_columns(read_ukb_table(path), censor_date=CENSOR)
    assert list(cols["subject_id"]) == list(PARTICIPANTS)
    one = cols.set_index("subject_id").loc["1000001"]
    assert one["lvedv_ml"] == 150.0 and one["rvef_pct"] == 56.25 and one["lvm_g"] == 100.0
    assert (one["sex"], one["age_years"], one["bmi"], one["smoking"], one["alcohol"]) == \
        (1, 60, 27.5, 1, 3)
    assert one["sbp_mmhg"] == 125.0            # mean of the two automated readings
    assert one["imaging_date"] == "2015-01-01"
    two = cols.set_index("subject_id").loc["1000002"]
    assert pd.isna(two["smoking"]) and pd.isna(two["alcohol"]) and pd.isna(two["bmi"])  # -3, -1
    assert two["sbp_mmhg"] == 140.0            # one reading given
    _check_outcomes(cols)


def test_both_namings_give_the_same_columns() -> None:
    classic = ukb_table_to_columns(_ukb_table("classic"), censor_date=CENSOR)
    rap = ukb_table_to_columns(_ukb_table("rap"), censor_date=CENSOR)
    pd.testing.assert_frame_equal(classic, rap)


def test_tsv_and_parquet_exports(tmp_path: Path) -> None:
    table = _ukb_table("classic")
    table.to_csv(tmp_path / "ukb.tab", sep="\t", index=False)
    table.to_parquet(tmp_path / "ukb.parquet", index=False)
    expected = ukb_table_to_columns(table, censor_date=CENSOR)
    for name in ("ukb.tab", "ukb.parquet"):
        got = ukb_table_to_columns(read_ukb_table(tmp_path / name), censor_date=CENSOR)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_missing_fields_are_named() -> None:
    table = _ukb_table("classic").drop(columns=["24105-2.0"] + [f"41280-0.{i}" for i in
                                                                range(N_DX)])
    with pytest.raises(DataError, match=r"lacks needed field\(s\): 24105 instance 2 "
                                        r"\(LV myocardial mass\); 41280 instance 0"):
        ukb_table_to_columns(table, censor_date=CENSOR)


def test_decoded_values_are_refused() -> None:
    table = _ukb_table("classic").astype({"31-0.0": object})
    table.loc[0, "31-0.0"] = "Female"
    with pytest.raises(DataError, match=r"field 31 \(Sex\) has values that are not numbers.*"
                                        r"'Female' in column '31-0.0'"):
        ukb_table_to_columns(table, censor_date=CENSOR)


def test_missing_id_column_and_bad_censor_date(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _ukb_table("classic").rename(columns={"eid": "participant"}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"t\.csv: no participant id column"):
        read_ukb_table(path)
    with pytest.raises(DataError, match="censor_date is not a date"):
        ukb_table_to_columns(_ukb_table("classic"), censor_date="soon")


# ============================================================================================
# UK Biobank: bulk files -> manifest
# ============================================================================================

class _FakeConverters:
    """Stand-ins for ecgcmr.convert: write a tiny real WFDB record / NIfTI pair; count calls."""

    def __init__(self) -> None:
        self.calls = {"ecg": 0, "cmr": 0}

    def ecg(self, xml: Path, out_dir: Path, record_name: str) -> SimpleNamespace:
        self.calls["ecg"] += 1
        if "broken" in Path(xml).read_text():
            raise DataError("not a resting ECG XML", path=xml)
        t = np.arange(5000) / 500.0
        _write_ecg(Path(out_dir), record_name, 0.5 * np.sin(2 * np.pi * t)[None].repeat(12, 0))
        return SimpleNamespace(record=Path(out_dir) / record_name,
                               measurements={"qrs_ms": np.float64(96.0), "rr_ms": 1000})

    def cmr(self, zip_path: Path, out_dir: Path, subject_id: str) -> SimpleNamespace:
        self.calls["cmr"] += 1
        affine = np.diag([1.5, 1.5, 8.0, 1.0])
        volume = np.zeros((4, 4, 2), dtype=np.float32)
        ed = write_nifti(Path(out_dir), f"{subject_id}_ed.nii.gz", volume, affine)
        es = write_nifti(Path(out_dir), f"{subject_id}_es.nii.gz", volume, affine)
        return SimpleNamespace(ed=Path(out_dir) / ed, es=Path(out_dir) / es)


def _bulk(tmp_path: Path) -> tuple[Path, Path]:
    """Bulk folder + table: 1000004 lacks its CMR zip, 1000006's ECG is broken, and an ECG of
    a participant who is not in the table."""
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    for eid in ("1000001", "1000002", "1000003", "1000004", "1000006", "9999999"):
        (bulk / f"{eid}_20205_2_0.xml").write_text("broken" if eid == "1000006" else "<ecg/>")
        if eid not in ("1000004", "9999999"):
            (bulk / f"{eid}_20209_2_0.zip").write_bytes(b"PK")
    table = tmp_path / "ukb.csv"
    _ukb_table("rap").to_csv(table, index=False)
    return bulk, table


def test_build_ukb_manifest_reports_and_resumes(tmp_path: Path) -> None:
    bulk, table = _bulk(tmp_path)
    fakes = _FakeConverters()
    out = tmp_path / "ukb"
    manifest = build_ukb_manifest(bulk, table, out, censor_date=CENSOR, convert_ecg=fakes.ecg,
                                  convert_cmr=fakes.cmr, progress=False)
    df = read_manifest(manifest)   # validates, files included
    assert list(df["subject_id"]) == ["1000001", "1000002", "1000003"]
    raw = pd.read_csv(manifest, dtype={"subject_id": str}).set_index("subject_id")
    assert raw.loc["1000001", "ecg_path"] == "ecg/1000001"
    assert raw.loc["1000001", "cmr_ed_path"] == "cmr/1000001_ed.nii.gz"
    assert raw.loc["1000001", "ecg_qrs_ms"] == 96.0 and raw.loc["1000001", "ecg_rr_ms"] == 1000
    assert raw.loc["1000001", "af_event"] == 1
    assert raw.loc["1000001", "af_time_years"] == pytest.approx(365 / Y)
    _check_outcomes(raw.reset_index())

    report = pd.read_csv(out / "build_report.csv", dtype=str).fillna("")
    reasons = dict(zip(report["subject_id"], report["reason"], strict=True))
    assert reasons["1000004"] == "no CMR file (field 20209) in the bulk folder"
    assert reasons["1000006"].startswith("ECG conversion failed: DataError:")
    assert "not a resting ECG XML" in reasons["1000006"]
    assert reasons["9999999"] == "participant id not in the UK Biobank table"
    assert "1000005" not in reasons    # never imaged, no files: not a candidate
    assert fakes.calls == {"ecg": 5, "cmr": 4}

    # a rerun converts nothing that already succeeded; only the broken ECG is tried again
    build_ukb_manifest(bulk, table, out, censor_date=CENSOR, convert_ecg=fakes.ecg,
                       convert_cmr=fakes.cmr, progress=False)
    assert fakes.calls == {"ecg": 6, "cmr": 4}


def test_bulk_pattern_needs_eid(tmp_path: Path) -> None:
    bulk, table = _bulk(tmp_path)
    fakes = _FakeConverters()
    with pytest.raises(DataError, match=r"must contain \{eid\} exactly once"):
        build_ukb_manifest(bulk, table, tmp_path / "o", censor_date=CENSOR,
                           ecg_pattern="ecg.xml", convert_ecg=fakes.ecg, convert_cmr=fakes.cmr)


def test_cli_manifest_ukb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    bulk, table = _bulk(tmp_path)
    fakes = _FakeConverters()
    ecg_module = types.ModuleType("ecgcmr.convert.ecg_xml")
    ecg_module.convert_ge_xml = fakes.ecg  # type: ignore[attr-defined]
    cmr_module = types.ModuleType("ecgcmr.convert.cmr_dicom")
    cmr_module.convert_cmr_zip = fakes.cmr  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ecgcmr.convert.ecg_xml", ecg_module)
    monkeypatch.setitem(sys.modules, "ecgcmr.convert.cmr_dicom", cmr_module)
    out = tmp_path / "ukb"
    assert main(["manifest", "ukb", "--bulk-dir", str(bulk), "--table", str(table),
                 "--out", str(out), "--censor-date", CENSOR]) == 0
    assert "(3 subjects, valid); 3 item(s) left out" in capsys.readouterr().out
    assert main(["validate", str(out / "manifest.csv")]) == 0
    assert main(["manifest", "ukb", "--bulk-dir", str(bulk), "--table", str(table),
                 "--out", str(out), "--censor-date", "not-a-date"]) == 2
    assert "censor_date is not a date" in capsys.readouterr().err


# ============================================================================================
# Folders of WFDB + NIfTI
# ============================================================================================

MIXED_CASE_LEADS = ["i", "ii", "III", "AVR", "avl", "aVF", "v1", "V2", "v3", "V4", "v5", "V6"]


def _record(folder: Path, name: str, leads: list[str]) -> None:
    n = len(leads)
    signal = 0.1 * np.sin(np.linspace(0, 20, 1000))[:, None].repeat(n, 1)
    wfdb.wrsamp(record_name=name, fs=500, units=["mV"] * n, sig_name=leads, p_signal=signal,
                fmt=["16"] * n, adc_gain=[1000.0] * n, baseline=[0] * n, write_dir=str(folder))


def _volume(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_nifti(folder, name, np.zeros((4, 4, 2), dtype=np.float32),
                 np.diag([1.5, 1.5, 8.0, 1.0]))


def _folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """007: complete (+ ED labels, mixed-case leads); D: complete; B: no V6; C: no ES volume;
    F: two ED files; E: only in the table; notes.txt: matches nothing."""
    ecg, cmr = tmp_path / "ecg", tmp_path / "cmr"
    ecg.mkdir()
    _record(ecg, "007", MIXED_CASE_LEADS)
    for sid in ("D", "C", "F"):
        _record(ecg, sid, list(LEADS))
    _record(ecg, "B", list(LEADS[:-1]))
    for name in ("007_ed.nii.gz", "007_es.nii.gz", "007_ed_seg.nii.gz", "D_ED.nii.gz",
                 "D_ES.nii.gz", "B_ed.nii.gz", "B_es.nii.gz", "C_ed.nii.gz", "F_ed.nii",
                 "F_ed.nii.gz", "F_es.nii.gz"):
        _volume(cmr, name)
    (cmr / "notes.txt").write_text("scanner log")
    table = tmp_path / "table.csv"
    pd.DataFrame({"subject_id": ["007", "B", "C", "D", "E"],
                  "lvedv_ml": [150.0, 140.0, 130.0, 120.0, 110.0],
                  "af_ever": [0, 1, 0, 1, 0]}).to_csv(table, index=False)
    return ecg, cmr, table


def test_build_folder_manifest(tmp_path: Path) -> None:
    ecg, cmr, table = _folders(tmp_path)
    out = tmp_path / "manifest"
    path = build_folder_manifest(ecg, cmr, out, table=table, progress=False)
    df = pd.read_csv(path, dtype={"subject_id": str})
    assert validate_manifest(df, root=out) == []
    assert list(df["subject_id"]) == ["007", "D"]
    row = df.set_index("subject_id").loc["007"]
    assert row["ecg_path"] == "../ecg/007" and row["cmr_ed_seg_path"] == "../cmr/007_ed_seg.nii.gz"
    assert row["lvedv_ml"] == 150.0
    assert pd.isna(df.set_index("subject_id").loc["D", "cmr_ed_seg_path"])
    assert "cmr_es_seg_path" not in df.columns

    report = pd.read_csv(out / "build_report.csv", dtype=str).fillna("")
    rows = set(zip(report["subject_id"], report["reason"], strict=True))
    assert ("C", "no file for required column cmr_es_path") in rows
    assert ("E", "in the table but no file matches this id") in rows
    assert ("", "matches no file pattern; ignored") in rows
    assert any(s == "B" and r.startswith("missing leads: V6") for s, r in rows)
    f_rows = report[report["subject_id"] == "F"]
    assert list(f_rows["reason"]) == ["2 files match cmr_ed_path for this subject"] * 2
    assert {Path(f).name for f in f_rows["file"]} == {"F_ed.nii", "F_ed.nii.gz"}
    assert set(report.loc[report["subject_id"] == "", "file"]) == {str(cmr / "notes.txt")}
    assert not report["file"].str.endswith(".dat").any()   # signal files are not "unmatched"
    assert len(read_manifest(path)) == 2


def test_folder_patterns(tmp_path: Path) -> None:
    ecg, cmr = tmp_path / "ecg", tmp_path / "cmr"
    ecg.mkdir()
    _record(ecg, "p1", list(LEADS))
    _volume(cmr / "p1", "sa_ED.nii.gz")
    _volume(cmr / "p1", "sa_ES.nii.gz")
    patterns = {"cmr_ed_path": r"(?P<id>[^/]+)/sa_ED\.nii\.gz",
                "cmr_es_path": r"(?P<id>[^/]+)/sa_ES\.nii\.gz"}
    path = build_folder_manifest(ecg, cmr, tmp_path / "out", patterns=patterns, progress=False)
    assert read_manifest(path)["subject_id"].tolist() == ["p1"]
    with pytest.raises(DataError, match="pattern for cmr_ed_path has no named group 'id'"):
        build_folder_manifest(ecg, cmr, tmp_path / "o2", patterns={"cmr_ed_path": r".*_ed"})
    with pytest.raises(DataError, match="required column ecg_path cannot be switched off"):
        build_folder_manifest(ecg, cmr, tmp_path / "o3", patterns={"ecg_path": None})


def test_table_errors_name_the_file(tmp_path: Path) -> None:
    ecg, cmr, _ = _folders(tmp_path)
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"subject_id": ["007", "007"], "lvedv_ml": [1.0, 2.0]}).to_csv(dup, index=False)
    with pytest.raises(DataError, match=r"dup\.csv: table lists subject\(s\) more than once: 007"):
        build_folder_manifest(ecg, cmr, tmp_path / "o", table=dup, progress=False)


def test_cli_manifest_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ecg, cmr, table = _folders(tmp_path)
    out = tmp_path / "m"
    assert main(["manifest", "folders", "--ecg-dir", str(ecg), "--cmr-dir", str(cmr),
                 "--out", str(out), "--table", str(table), "--pattern",
                 "cmr_ed_seg_path="]) == 0
    assert "(2 subjects, valid)" in capsys.readouterr().out
    assert "cmr_ed_seg_path" not in pd.read_csv(out / "manifest.csv").columns
    assert main(["validate", str(out / "manifest.csv")]) == 0


def test_ukb_bulk_files_in_the_real_formats_become_a_cohort_the_pipeline_reads(
        tmp_path: Path) -> None:
    """End to end with the real converters: CardioSoft XML + DICOM cine zips written in the
    UK Biobank layout -> manifest -> preprocessing cache, every subject usable."""
    from writers.dicom_cmr import synthetic_sax_cine, write_sax_cine_dicoms
    from writers.ge_xml import write_ge_xml

    from ecgcmr.config import get_profile
    from ecgcmr.data.cache import build_cache
    from ecgcmr.synth.ecg import simulate_ecg
    from ecgcmr.synth.physiology import sample_state

    bulk = tmp_path / "bulk"
    bulk.mkdir()
    eids = ["1000001", "1000002", "1000003"]
    for k, eid in enumerate(eids):
        rng = np.random.default_rng(k)
        ecg = simulate_ecg(sample_state(rng, eid), rng, fs=500)
        write_ge_xml(bulk / f"{eid}_20205_2_0.xml", ecg, 500)
        cine = synthetic_sax_cine(n_frames=12, es_frame=4 + k, seed=k)
        write_sax_cine_dicoms(bulk / f"{eid}_20209_2_0.zip", cine.image, cine.affine,
                              trigger_times_ms=cine.trigger_times_ms, shuffle_seed=k)
    table = tmp_path / "ukb.csv"
    _ukb_table("classic").to_csv(table, index=False)
    manifest = build_ukb_manifest(bulk, table, tmp_path / "ukb", censor_date=CENSOR,
                                  progress=False)
    df = read_manifest(manifest)
    assert list(df["subject_id"]) == eids
    cache = build_cache(df, tmp_path / "cache", get_profile("tiny").cache_spec(),
                        progress=False)
    assert cache.index["ok"].all(), cache.qc_report
    assert np.isfinite(np.asarray(cache.ecg)).all() and np.asarray(cache.cmr_ed).std() > 0


def test_a_records_own_signal_file_is_not_an_unknown_file(tmp_path: Path) -> None:
    """PTB keeps its Frank leads in a .xyz file that the header names: part of the record."""
    ecg, cmr, _ = _folders(tmp_path)
    hea = ecg / "D.hea"
    (ecg / "D.dat").rename(ecg / "D.xyz")
    hea.write_text(hea.read_text().replace("D.dat", "D.xyz"))
    build_folder_manifest(ecg, cmr, tmp_path / "out", progress=False)
    report = pd.read_csv(tmp_path / "out" / "build_report.csv", dtype=str).fillna("")
    unknown = report[report["reason"] == "matches no file pattern; ignored"]
    assert [Path(f).name for f in unknown["file"]] == ["notes.txt"]
