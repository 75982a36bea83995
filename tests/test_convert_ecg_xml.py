"""GE CardioSoft XML (UK Biobank field 20205) -> WFDB: exact round trips, the file's own rate and
resolution, lead matching, device measurements, and every malformed input named in the error.

Inputs are synthetic ECGs (``simulate_ecg``) written in the real format by ``write_ge_xml``;
the known truth is the signal quantised at the file's resolution.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from writers.ge_xml import write_ge_xml

from ecgcmr.constants import LEADS
from ecgcmr.convert.ecg_xml import (
    MEASUREMENT_NAMES,
    convert_ge_xml,
    convert_ge_xml_many,
    read_ge_xml,
)
from ecgcmr.data.ecg import load_ecg, read_ecg
from ecgcmr.data.writers import write_wfdb
from ecgcmr.errors import DataError
from ecgcmr.synth.ecg import simulate_ecg
from ecgcmr.synth.physiology import sample_state

MEASURED = {"hr_bpm": 64.0, "pr_ms": 158.0, "qrs_ms": 92.0, "qt_ms": 402.0, "qtc_ms": 417.0,
            "p_axis_deg": 55.0, "r_axis_deg": -12.0, "t_axis_deg": 38.0}


def synthetic_ecg(fs: int, seed: int = 3) -> np.ndarray:
    """(12, 10 s * fs) mV from the project's ECG simulator."""
    state = sample_state(np.random.default_rng(seed), f"XML{seed}")
    return simulate_ecg(state, np.random.default_rng(seed + 100), fs=fs)


def quantised(x: np.ndarray, resolution_uv: float) -> np.ndarray:
    """What the device stores: the signal on the grid of ``resolution_uv`` µV steps, in mV."""
    return np.round(x * 1000.0 / resolution_uv) * resolution_uv / 1000.0


@pytest.fixture(scope="module")
def ecg500() -> np.ndarray:
    return synthetic_ecg(500)


@pytest.fixture
def good_xml(tmp_path: Path, ecg500: np.ndarray) -> Path:
    return write_ge_xml(tmp_path / "1000001_20205_2_0.xml", ecg500, 500,
                        median_mv=ecg500[:, :600], measurements=MEASURED)


def edited(path: Path, pattern: str, replacement: str, count: int = 1) -> Path:
    """A copy of ``path`` with one regex substitution (the test fails if nothing matched)."""
    text = path.read_text(encoding="iso-8859-1")
    new, n = re.subn(pattern, replacement, text, count=count, flags=re.S)
    assert n >= 1, f"pattern {pattern!r} not found"
    out = path.with_name("bad_" + path.name)
    out.write_text(new, encoding="iso-8859-1")
    return out


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("fs", [500, 1000, 250])
@pytest.mark.parametrize("resolution_uv", [5.0, 4.88])
def test_round_trip_is_exact_at_the_files_rate_and_resolution(
    tmp_path: Path, fs: int, resolution_uv: float
) -> None:
    x = synthetic_ecg(fs)
    xml = write_ge_xml(tmp_path / "a.xml", x, fs, resolution_uv=resolution_uv)
    truth = quantised(x, resolution_uv)

    ecg = read_ge_xml(xml)
    assert ecg.fs == fs and ecg.resolution_uv == resolution_uv
    assert ecg.strip_mv.shape == (12, 10 * fs)
    np.testing.assert_allclose(ecg.strip_mv, truth, rtol=0, atol=1e-9)

    done = convert_ge_xml(xml, tmp_path / "wfdb", "rec")
    y, fs_read = read_ecg(done.record)
    assert fs_read == fs
    # within one LSB (in fact float32 rounding only: the ADC steps are copied unchanged)
    np.testing.assert_allclose(y, truth, rtol=0, atol=resolution_uv / 1000.0)
    steps = np.round(y.astype(np.float64) * 1000.0 / resolution_uv)
    np.testing.assert_array_equal(steps, np.round(truth * 1000.0 / resolution_uv))
    header = (tmp_path / "wfdb" / "rec.hea").read_text()
    assert f"{1000.0 / resolution_uv!r}(0)/mV" in header  # the file's resolution, not 5 µV


def test_resolution_is_read_from_the_file_not_assumed(tmp_path: Path, ecg500: np.ndarray) -> None:
    at_5 = write_ge_xml(tmp_path / "a.xml", ecg500, 500, resolution_uv=5.0)
    # same integers, declared at 4.88 µV per step: amplitudes must shrink by 4.88 / 5
    at_488 = edited(at_5, r'(<Resolution units="uVperLsb">)5(</Resolution>)', r"\g<1>4.88\2")
    np.testing.assert_allclose(read_ge_xml(at_488).strip_mv,
                               read_ge_xml(at_5).strip_mv * (4.88 / 5.0), rtol=1e-12, atol=1e-15)
    assert read_ge_xml(at_488).resolution_uv == 4.88


def test_converted_record_passes_the_loader(good_xml: Path, tmp_path: Path) -> None:
    done = convert_ge_xml(good_xml, tmp_path / "wfdb", "1000001")
    assert load_ecg(done.record).shape == (12, 5000)


def test_median_beats_are_read_and_written(good_xml: Path, tmp_path: Path,
                                           ecg500: np.ndarray) -> None:
    ecg = read_ge_xml(good_xml)
    assert ecg.median_fs == 500 and ecg.median_mv is not None
    np.testing.assert_allclose(ecg.median_mv, quantised(ecg500[:, :600], 5.0), atol=1e-9)
    done = convert_ge_xml(good_xml, tmp_path / "wfdb", "rec")
    assert done.median_record == tmp_path / "wfdb" / "rec_median"
    median, fs = read_ecg(done.median_record)
    assert fs == 500
    np.testing.assert_allclose(median, ecg.median_mv, atol=0.005)


def test_file_without_median_beats(tmp_path: Path, ecg500: np.ndarray) -> None:
    xml = write_ge_xml(tmp_path / "a.xml", ecg500, 500)
    assert read_ge_xml(xml).median_mv is None
    done = convert_ge_xml(xml, tmp_path / "wfdb", "rec")
    assert done.median_record is None
    assert not (tmp_path / "wfdb" / "rec_median.hea").exists()


def test_shuffled_and_case_varied_lead_labels(tmp_path: Path, ecg500: np.ndarray) -> None:
    order = [7, 0, 11, 3, 5, 1, 9, 2, 4, 6, 10, 8]
    labels = [LEADS[i] for i in order]
    labels = [lab.upper() if k % 2 else lab.lower() for k, lab in enumerate(labels)]
    assert "avr" in labels or "AVR" in labels
    xml = write_ge_xml(tmp_path / "a.xml", ecg500, 500, lead_order=labels)
    assert re.search(r'lead="v2".*lead="I".*lead="v6"', xml.read_text(), flags=re.S)  # shuffled
    np.testing.assert_allclose(read_ge_xml(xml).strip_mv, quantised(ecg500, 5.0), atol=1e-9)


def test_inverted_lead_is_negated(tmp_path: Path, ecg500: np.ndarray) -> None:
    xml = write_ge_xml(tmp_path / "a.xml", ecg500, 500)
    # a file with -aVR instead of aVR (Cabrera display): the samples are those of -aVR
    text = xml.read_text(encoding="iso-8859-1")
    match = re.search(r'<WaveformData lead="aVR">(.*?)</WaveformData>', text, flags=re.S)
    assert match
    negated = ",".join(str(-int(v)) for v in match.group(1).split(","))
    bad = edited(xml, r'<WaveformData lead="aVR">.*?</WaveformData>',
                 f'<WaveformData lead="-aVR">{negated}</WaveformData>')
    np.testing.assert_allclose(read_ge_xml(bad).strip_mv, read_ge_xml(xml).strip_mv, atol=1e-12)


# --- measurements ----------------------------------------------------------------------------


def test_measurements_are_parsed_with_explicit_names(good_xml: Path) -> None:
    m = read_ge_xml(good_xml).measurements
    assert tuple(m) == MEASUREMENT_NAMES
    for name, value in MEASURED.items():
        assert m[name] == value
    assert math.isnan(m["rr_ms"]) and math.isnan(m["p_duration_ms"])  # not in the file


def test_measurement_units_are_converted(good_xml: Path) -> None:
    bad = edited(good_xml, r'<QTInterval units="ms">402</QTInterval>',
                 '<QTInterval units="s">0.402</QTInterval>')
    assert read_ge_xml(bad).measurements["qt_ms"] == pytest.approx(402.0)


def test_measurements_absent_are_all_nan(tmp_path: Path, ecg500: np.ndarray) -> None:
    xml = write_ge_xml(tmp_path / "a.xml", ecg500, 500)
    assert all(math.isnan(v) for v in read_ge_xml(xml).measurements.values())


# --- malformed files -------------------------------------------------------------------------


def assert_error(path: Path, *fragments: str) -> None:
    """read_ge_xml(path) raises DataError naming the file and each fragment of the problem."""
    with pytest.raises(DataError) as info:
        read_ge_xml(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_lead(good_xml: Path) -> None:
    bad = edited(good_xml, r'(<StripData>.*?)<WaveformData lead="V3">.*?</WaveformData>', r"\1")
    assert_error(bad, "StripData", "missing leads: V3")


def test_leads_of_different_lengths(good_xml: Path) -> None:
    bad = edited(good_xml, r'(<StripData>.*?<WaveformData lead="II">[-\d]+),[-\d]+', r"\1")
    assert_error(bad, "different lengths", "II=4999")


def test_wrong_length_vs_declared_sample_count(good_xml: Path) -> None:
    bad = edited(good_xml, r"(<StripData>.*?<ChannelSampleCountTotal>)5000", r"\g<1>6000")
    assert_error(bad, "wrong number of samples", "6000 (ChannelSampleCountTotal)", "found 5000")


def test_wrong_length_vs_duration_when_count_not_declared(
    tmp_path: Path, ecg500: np.ndarray
) -> None:
    xml = write_ge_xml(tmp_path / "a.xml", ecg500[:, :4000], 500)
    bad = edited(xml, r"<ChannelSampleCountTotal>4000</ChannelSampleCountTotal>", "")
    assert_error(bad, "wrong number of samples", "5000 (10 s at 500 Hz)", "found 4000")


def test_non_numeric_sample(good_xml: Path) -> None:
    bad = edited(good_xml, r'(<StripData>.*?<WaveformData lead="V5">(?:[-\d]+,){10})[-\d]+',
                 r"\g<1>12a")
    assert_error(bad, "non-numeric sample in lead 'V5'", "'12a' at sample 10")


@pytest.mark.parametrize(("pattern", "replacement", "fragment"), [
    (r'(<StripData>.*?)<SampleRate units="Hz">500</SampleRate>', r"\1", "no SampleRate"),
    (r'(<StripData>.*?<SampleRate units="Hz">)500', r"\g<1>fast", "invalid SampleRate"),
    (r'(<StripData>.*?<SampleRate units="Hz">)500', r"\g<1>0", "invalid SampleRate"),
    (r'(<StripData>.*?)<Resolution units="uVperLsb">5</Resolution>', r"\1", "no Resolution"),
    (r'(<StripData>.*?<Resolution units="uVperLsb">)5', r"\g<1>-5", "invalid Resolution"),
    (r'(<StripData>.*?<Resolution units=")uVperLsb', r"\1mVperLsb", "unknown Resolution units"),
])
def test_missing_or_invalid_rate_and_resolution(
    good_xml: Path, pattern: str, replacement: str, fragment: str
) -> None:
    assert_error(edited(good_xml, pattern, replacement), "StripData", fragment)


def test_no_strip_data(good_xml: Path) -> None:
    bad = edited(good_xml, r"<StripData>.*</StripData>", "")
    assert_error(bad, "no StripData")


def test_non_numeric_measurement(good_xml: Path) -> None:
    bad = edited(good_xml, r'<QRSDuration units="ms">92', '<QRSDuration units="ms">wide')
    assert_error(bad, "non-numeric measurement QRSDuration")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE CardiologyXML [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<CardiologyXML><ObservationType>&lol3;</ObservationType></CardiologyXML>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE CardiologyXML [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<CardiologyXML><ObservationType>&secret;</ObservationType></CardiologyXML>
"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_entity_expansion_and_external_entities_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "attack.xml"
    path.write_text(text)
    assert_error(path, "entity expansion / external reference refused")


def test_plain_doctype_is_accepted(good_xml: Path) -> None:
    with_doctype = edited(good_xml, r"(<\?xml[^>]*\?>)",
                          r'\1<!DOCTYPE CardiologyXML SYSTEM "CardiologyXML.dtd">')
    assert read_ge_xml(with_doctype).strip_mv.shape == (12, 5000)


@pytest.mark.parametrize(("text", "fragment"), [
    ("<CardiologyXML><StripData>", "not well-formed XML"),
    ("<RestingECG></RestingECG>", "expected root element <CardiologyXML>; found <RestingECG>"),
])
def test_not_a_cardiosoft_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "other.xml"
    path.write_text(text)
    assert_error(path, fragment)


def test_convert_reports_the_xml_file(good_xml: Path, tmp_path: Path) -> None:
    bad = edited(good_xml, r"<StripData>.*</StripData>", "")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        convert_ge_xml(bad, tmp_path / "wfdb", "rec")
    assert not (tmp_path / "wfdb" / "rec.hea").exists()


# --- many files ------------------------------------------------------------------------------


def test_many_files_skip_and_report_the_bad_one(good_xml: Path, tmp_path: Path,
                                                ecg500: np.ndarray) -> None:
    second = write_ge_xml(tmp_path / "1000002_20205_2_0.xml", 0.5 * ecg500, 500,
                          resolution_uv=4.88, measurements={"hr_bpm": 71.0})
    broken = edited(good_xml, r'(<StripData>.*?)<WaveformData lead="V6">.*?</WaveformData>',
                    r"\1")
    broken = broken.rename(tmp_path / "1000003_20205_2_0.xml")
    batch = convert_ge_xml_many([good_xml, second, broken], tmp_path / "wfdb")

    assert batch.table["subject_id"].tolist() == ["1000001", "1000002"]
    assert batch.table["resolution_uv"].tolist() == [5.0, 4.88]
    assert batch.table["hr_bpm"].tolist() == [64.0, 71.0]
    assert set(MEASUREMENT_NAMES) <= set(batch.table.columns)
    for record in batch.table["record"]:
        assert read_ecg(record)[0].shape == (12, 5000)
    assert len(batch.failures) == 1
    failure = batch.failures.iloc[0]
    assert failure["subject_id"] == "1000003"
    assert str(broken) in failure["reason"] and "missing leads: V6" in failure["reason"]
    assert not (tmp_path / "wfdb" / "1000003_20205_2_0.hea").exists()


# --- the shared WFDB writer ------------------------------------------------------------------


def test_wfdb_writer_output_is_read_back(tmp_path: Path, ecg500: np.ndarray) -> None:
    x = quantised(ecg500, 1.0)
    x[4, 10] = np.nan  # an invalid sample stays invalid
    record = write_wfdb(tmp_path, "w1", x, 500.0, adc_gain_per_mv=1000.0,
                        comments=["two\nlines"])
    y, fs = read_ecg(record)
    assert fs == 500
    assert np.isnan(y[4, 10])
    finite = np.isfinite(x)
    np.testing.assert_allclose(y[finite], x[finite], atol=1e-6)
    header = (tmp_path / "w1.hea").read_text()
    assert "# two lines" in header and " ".join(LEADS[-3:]) not in header  # one lead per line


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"record_name": "../escape"}, "invalid WFDB record name"),
    ({"signal_mv": np.zeros((11, 10))}, "wrong shape"),
    ({"signal_mv": np.full((12, 10), 40.0)}, "does not fit WFDB format 16"),
    ({"fs": 0.0}, "invalid sampling frequency"),
])
def test_wfdb_writer_refuses_bad_input(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    args = {"record_name": "w1", "signal_mv": np.zeros((12, 10)), "fs": 500.0, **kwargs}
    with pytest.raises(DataError, match=re.escape(fragment)):
        write_wfdb(tmp_path, args["record_name"], args["signal_mv"], args["fs"],
                   adc_gain_per_mv=1000.0)
