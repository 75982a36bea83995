"""``ecgcmr convert ecg``: a folder mixing every ECG format the project reads (WFDB, PhysioNet/CinC
``.mat``, DICOM, GE CardioSoft and MUSE XML) and files that are not ECGs becomes one WFDB record
per recording (12 named leads in mV, Einthoven exact) and a report naming every input.

Also: a CinC record read through its ``.mat`` path, and a record's own signal files of any suffix
(PTB's ``.xyz``) counted as part of it. Every file is written on the fly from one synthetic ECG
(``simulate_ecg``: Einthoven/Goldberger exact).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.io import loadmat
from writers.cinc_mat import write_cinc_mat
from writers.dicom_ecg import write_dicom_ecg
from writers.ge_xml import write_ge_xml
from writers.muse_xml import write_muse_xml

from ecgcmr.cli import main
from ecgcmr.constants import LEADS
from ecgcmr.convert.batch import REPORT_COLUMNS, REPORT_NAME
from ecgcmr.convert.ecg_any import convert_ecgs
from ecgcmr.data.ecg import load_ecg, read_ecg, record_signal_files
from ecgcmr.data.writers import write_wfdb
from ecgcmr.errors import DataError
from ecgcmr.synth.ecg import simulate_ecg
from ecgcmr.synth.physiology import sample_state

EINTHOVEN_RMS_MV = 0.005  # 5 µV


@pytest.fixture(scope="module")
def ecg500() -> np.ndarray:
    return simulate_ecg(sample_state(np.random.default_rng(0), "S0"), np.random.default_rng(1))


def einthoven_rms(ecg: np.ndarray) -> float:
    residual = ecg[LEADS.index("II")] - ecg[LEADS.index("I")] - ecg[LEADS.index("III")]
    return float(np.sqrt(np.mean((residual - residual.mean()) ** 2)))


def header_lead_names(record: Path) -> list[str]:
    lines = [ln for ln in record.with_suffix(".hea").read_text().splitlines()
             if ln and not ln.startswith("#")]
    return [ln.split()[-1] for ln in lines[1:]]


def ptb_like_record(folder: Path, x: np.ndarray) -> Path:
    """PTB's layout: the 12 leads in ``s0010_re.dat``, the Frank leads vx, vy, vz in
    ``s0010_re.xyz``, one header naming both files."""
    record = write_wfdb(folder, "s0010_re", x, 500, adc_gain_per_mv=2000.0)
    frank = np.round(x[[0, 6, 7]] * 2000).astype("<i2")
    (folder / "s0010_re.xyz").write_bytes(np.ascontiguousarray(frank.T).tobytes())
    hea = folder / "s0010_re.hea"
    lines = hea.read_text().splitlines()
    lines[0] = lines[0].replace("s0010_re 12 ", "s0010_re 15 ")
    lines[13:13] = [f"s0010_re.xyz 16 2000.0(0)/mV 16 0 {int(frank[k, 0])} 0 0 {name}"
                    for k, name in enumerate(("vx", "vy", "vz"))]
    hea.write_text("\n".join(lines) + "\n")
    return record


@pytest.fixture
def mixed(tmp_path: Path, ecg500: np.ndarray) -> Path:
    """A folder (with a subfolder) holding every format, a non-ECG text file, an XML that is
    no ECG, an orphan .mat and a broken MUSE file."""
    root = tmp_path / "in"
    x = ecg500
    write_wfdb(root / "wfdb", "rec_w", x, 500, adc_gain_per_mv=200.0)      # 5 µV steps
    write_cinc_mat(root / "cinc", "A0001", x, 500)
    write_dicom_ecg(root / "IM0001", x, 500)                                # no suffix
    write_ge_xml(root / "1000001_20205_2_0.xml", x, 500, resolution_uv=5.0)
    write_muse_xml(root / "sub" / "muse_1.xml", x, 500, median_mv=x[:, :600])
    write_muse_xml(root / "sub" / "export.bin", x, 500)                      # told by content
    bad = write_muse_xml(root / "sub" / "broken.xml", x, 500)
    bad.write_text(re.sub(r"<LeadID>V4</LeadID>", "<LeadID>V7</LeadID>", bad.read_text()))
    (root / "notes.txt").write_text("not an ECG\n")
    (root / "other.xml").write_text("<?xml version='1.0'?><!-- x --><Inventory/>")
    (root / "cinc" / "B0002.mat").write_bytes(b"\x00" * 64)
    return root


def test_mixed_folder_converts_every_ecg_and_reports_the_rest(mixed: Path, tmp_path: Path,
                                                              ecg500: np.ndarray) -> None:
    out = tmp_path / "out"
    report = convert_ecgs([mixed], out, progress=False)

    assert list(report.columns) == list(REPORT_COLUMNS)
    on_disk = pd.read_csv(out / REPORT_NAME, keep_default_na=False)
    assert on_disk["input"].tolist() == report["input"].tolist()
    by_name = {Path(p).name: row for p, row in zip(report["input"], report.itertuples(),
                                                   strict=True)}
    assert set(by_name) == {"rec_w.hea", "A0001.hea", "IM0001", "1000001_20205_2_0.xml",
                            "muse_1.xml", "export.bin", "broken.xml", "notes.txt", "other.xml",
                            "B0002.mat"}  # signal files (.dat, A0001.mat) are the records'
    formats = {name: row.format for name, row in by_name.items()}
    assert formats["rec_w.hea"] == "WFDB" and formats["A0001.hea"] == "PhysioNet/CinC .mat"
    assert formats["IM0001"] == "DICOM" and formats["1000001_20205_2_0.xml"] == "GE CardioSoft XML"
    assert formats["muse_1.xml"] == formats["export.bin"] == "GE MUSE XML"

    converted = report[report["status"] == "converted"]
    assert len(converted) == 6
    tolerance_mv = {"rec_w.hea": 0.0025, "A0001.hea": 0.0005, "IM0001": 0.00125,
                    "1000001_20205_2_0.xml": 0.0025, "muse_1.xml": 0.00488, "export.bin": 0.00488}
    for row in converted.itertuples():
        record = Path(row.record)
        assert record.parent == out
        ecg, fs = read_ecg(record)
        assert fs == 500 and ecg.shape == (12, 5000)
        assert header_lead_names(record) == list(LEADS)
        assert einthoven_rms(ecg) <= EINTHOVEN_RMS_MV, row.input
        error = np.abs(ecg - ecg500).max()
        assert error <= tolerance_mv[Path(row.input).name] + 1e-6, (row.input, error)
        assert load_ecg(record).shape == (12, 5000)

    skipped = report[report["status"] == "skipped"].set_index(
        report.loc[report["status"] == "skipped", "input"].map(lambda p: Path(p).name))
    assert set(skipped.index) == {"notes.txt", "other.xml", "B0002.mat", "broken.xml"}
    assert "not a recognised ECG format" in skipped.loc["notes.txt", "reason"]
    assert "root element <Inventory>" in skipped.loc["other.xml", "reason"]
    assert "B0002.hea" in skipped.loc["B0002.mat", "reason"]
    assert "missing leads: V4" in skipped.loc["broken.xml", "reason"]
    assert str(mixed / "sub" / "broken.xml") in skipped.loc["broken.xml", "reason"]
    assert (skipped["record"] == "").all()
    assert not (out / "broken.hea").exists()


def test_cli_summary_and_exit_status(mixed: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["convert", "ecg", str(mixed), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"converted 6 of 10 inputs; 4 skipped, see {out / REPORT_NAME}" in printed

    assert main(["convert", "ecg", str(mixed / "notes.txt"), str(tmp_path / "nowhere.xml"),
                 "--out", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "converted 0 of 2 inputs; 2 skipped" in capsys.readouterr().out
    report = pd.read_csv(tmp_path / "none" / REPORT_NAME, keep_default_na=False)
    reasons = dict(zip(report["input"], report["reason"], strict=True))
    assert reasons[str(tmp_path / "nowhere.xml")] == "not found"


def test_names_are_unique_and_inputs_never_overwritten(tmp_path: Path, ecg500: np.ndarray) -> None:
    folder = tmp_path / "data"
    write_muse_xml(folder / "a.xml", ecg500, 500)
    write_dicom_ecg(folder / "a.dcm", ecg500, 500)
    write_wfdb(folder, "b", ecg500, 500, adc_gain_per_mv=1000.0)   # a WFDB input in --out
    before = (folder / "b.dat").read_bytes()
    report = convert_ecgs([folder, folder / "a.xml"], folder, progress=False)  # each once
    names = sorted(Path(r).name for r in report["record"])
    assert names == ["a", "a_2", "b_2"]
    assert (folder / "b.dat").read_bytes() == before


# --- PhysioNet/CinC .mat records and a record's own signal files -----------------------------


def test_cinc_mat_path_reads_like_the_record(tmp_path: Path, ecg500: np.ndarray) -> None:
    mat = write_cinc_mat(tmp_path, "A0001", ecg500, 500)
    header = (tmp_path / "A0001.hea").read_text()
    assert header.splitlines()[1].startswith("A0001.mat 16+24 1000/mV 16 0 ")
    val = loadmat(mat)["val"]                       # what the challenge's own loader reads
    assert val.dtype == np.int16 and val.shape == (12, 5000)
    np.testing.assert_array_equal(val, np.round(ecg500 * 1000))

    ecg, fs = read_ecg(mat)
    assert fs == 500
    np.testing.assert_allclose(ecg, ecg500, rtol=0, atol=0.0005 + 1e-6)   # half a 1 µV step
    np.testing.assert_array_equal(ecg, read_ecg(tmp_path / "A0001")[0])
    np.testing.assert_array_equal(load_ecg(mat), load_ecg(tmp_path / "A0001.hea"))


def test_mat_without_header_still_says_header_not_found(tmp_path: Path) -> None:
    (tmp_path / "C0003.mat").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="WFDB header not found"):
        read_ecg(tmp_path / "C0003.mat")


def test_a_records_own_signal_files_of_any_suffix_belong_to_it(tmp_path: Path,
                                                                ecg500: np.ndarray) -> None:
    record = ptb_like_record(tmp_path / "ptb", ecg500)
    assert record_signal_files(record.with_suffix(".hea")) == ["s0010_re.dat", "s0010_re.xyz"]
    ecg, _ = read_ecg(record.with_suffix(".xyz"))      # the Frank-lead file names the record
    np.testing.assert_allclose(ecg, ecg500, atol=0.00025 + 1e-6)
    report = convert_ecgs([tmp_path / "ptb"], tmp_path / "out", progress=False)
    assert report["input"].tolist() == [str(record.with_suffix(".hea"))]
    assert report["status"].tolist() == ["converted"]
    assert read_ecg(report["record"][0])[0].shape == (12, 5000)


def test_rerun_into_a_subfolder_skips_earlier_outputs(tmp_path: Path, ecg500: np.ndarray) -> None:
    folder = tmp_path / "data"
    write_muse_xml(folder / "a.xml", ecg500, 500)
    first = convert_ecgs([folder], folder / "wfdb", progress=False)
    again = convert_ecgs([folder], folder / "wfdb", progress=False)
    assert first["record"].tolist() == again["record"].tolist() == [str(folder / "wfdb" / "a")]
