"""GE MUSE XML -> WFDB: round trip within one quantisation step on all 12 leads, the file's own
rate and resolution, and every malformed or hostile file refused with a DataError naming it.

Inputs are synthetic ECGs (``simulate_ecg``, Einthoven/Goldberger exact) written in the MUSE
layout by ``write_muse_xml`` (only I, II, V1-V6 stored, as MUSE does).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from writers.muse_xml import write_muse_xml

from ecgcmr.constants import LEADS
from ecgcmr.convert import safe_xml
from ecgcmr.convert.muse_xml import convert_muse_xml, read_muse_xml
from ecgcmr.data.ecg import load_ecg, read_ecg
from ecgcmr.errors import DataError
from ecgcmr.synth.ecg import simulate_ecg
from ecgcmr.synth.physiology import sample_state


@pytest.fixture(scope="module")
def ecg500() -> np.ndarray:
    return simulate_ecg(sample_state(np.random.default_rng(0), "S0"), np.random.default_rng(1))


@pytest.fixture
def good_xml(tmp_path: Path, ecg500: np.ndarray) -> Path:
    return write_muse_xml(tmp_path / "muse.xml", ecg500, 500, median_mv=ecg500[:, :600],
                          measurements={"hr_bpm": 61.0, "qrs_ms": 94.0})


def edited(path: Path, pattern: str, replacement: str, count: int = 1) -> Path:
    """A copy of ``path`` with one regex substitution (the test fails if nothing matched)."""
    text = path.read_text(encoding="iso-8859-1")
    new, n = re.subn(pattern, replacement, text, count=count, flags=re.S)
    assert n >= 1, f"pattern {pattern!r} not found"
    out = path.with_name("bad_" + path.name)
    out.write_text(new, encoding="iso-8859-1")
    return out


def rhythm(pattern: str) -> str:
    """``pattern`` inside the Rhythm waveform (the file holds a Median waveform first)."""
    return r"(<WaveformType>Rhythm</WaveformType>.*?)" + pattern


def assert_error(path: Path, fragment: str) -> None:
    with pytest.raises(DataError) as err:
        read_muse_xml(path)
    assert str(path) in str(err.value), str(err.value)
    assert fragment in str(err.value), str(err.value)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize(("fs", "uv_per_bit", "units"), [
    (500, 4.88, "MICROVOLTS"), (250, 5.0, "MICROVOLTS"), (1000, 2.5, "MILLIVOLTS"),
])
def test_round_trip_within_one_step_on_all_12_leads(
    tmp_path: Path, fs: int, uv_per_bit: float, units: str
) -> None:
    x = simulate_ecg(sample_state(np.random.default_rng(0), "S0"), np.random.default_rng(1),
                     fs=fs)
    path = write_muse_xml(tmp_path / "a.xml", x, fs, uv_per_bit=uv_per_bit, units=units)
    ecg, fs_read, info = read_muse_xml(path)
    assert fs_read == fs and ecg.shape == (12, 10 * fs)
    step_mv = uv_per_bit / 1000.0
    error = np.abs(ecg - x).max(axis=1)
    assert (error <= step_mv * (1 + 1e-9)).all(), dict(zip(LEADS, error * 1000, strict=True))
    stored = [LEADS.index(lead) for lead in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
    assert (error[stored] <= step_mv / 2 * (1 + 1e-9)).all()  # stored leads: half a step
    np.testing.assert_allclose(info["step_uv"][stored], uv_per_bit)

    done = convert_muse_xml(path, tmp_path / "wfdb", "rec")
    y, fs_wfdb = read_ecg(done.record)
    assert fs_wfdb == fs
    # the WFDB record holds every lead exactly (III on the step, aVR/aVL/aVF on half a step)
    np.testing.assert_allclose(y, ecg, rtol=0, atol=1e-5)
    assert load_ecg(done.record).shape == (12, 5000)


def test_limb_leads_are_derived_exactly(good_xml: Path) -> None:
    ecg, _, _ = read_muse_xml(good_xml)
    i, ii, iii, avr, avl, avf = ecg[:6]
    np.testing.assert_allclose(iii, ii - i, atol=1e-12)
    np.testing.assert_allclose(avr, -(i + ii) / 2, atol=1e-12)
    np.testing.assert_allclose(avl, i - ii / 2, atol=1e-12)
    np.testing.assert_allclose(avf, ii - i / 2, atol=1e-12)


def test_rhythm_not_median_is_read_and_per_lead_resolution(tmp_path: Path,
                                                            ecg500: np.ndarray) -> None:
    steps = [4.88, 4.88, 2.0, 2.0, 3.0, 3.0, 5.0, 5.0]
    path = write_muse_xml(tmp_path / "m.xml", ecg500, 500, uv_per_bit=steps,
                          median_mv=ecg500[:, :600],
                          lead_ids=["V6", "V5", "V4", "V3", "V2", "V1", "II", "I"])
    ecg, fs, info = read_muse_xml(path)
    assert ecg.shape == (12, 5000) and fs == 500
    for lead, step in zip(("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"), steps, strict=True):
        k = LEADS.index(lead)
        assert info["step_uv"][k] == pytest.approx(step)
        assert np.abs(ecg[k] - ecg500[k]).max() <= step / 2000 * (1 + 1e-9)


def test_rate_from_sample_base_and_exponent(tmp_path: Path, ecg500: np.ndarray) -> None:
    path = write_muse_xml(tmp_path / "e.xml", ecg500, 500, sample_exponent=1)  # 50 x 10^1
    assert "<SampleBase>50</SampleBase>" in path.read_text()
    assert read_muse_xml(path)[1] == 500


def test_measurements_and_a_plain_doctype(good_xml: Path) -> None:
    assert '<!DOCTYPE RestingECG SYSTEM "restecg.dtd">' in good_xml.read_text()
    info = read_muse_xml(good_xml)[2]
    assert info["measurements"]["hr_bpm"] == 61 and info["measurements"]["qrs_ms"] == 94
    assert np.isnan(info["measurements"]["qt_ms"])


# --- malformed files -------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "replacement", "fragment"), [
    (rhythm(r"<LeadData>(?:(?!</LeadData>).)*<LeadID>V4</LeadID>.*?</LeadData>"), r"\1",
     "missing leads: V4"),
    (rhythm(r"<LeadID>V3</LeadID>"), r"\1<LeadID>V2</LeadID>", "lead V2 appears twice"),
    (rhythm(r"<WaveFormData>.{8}"), r"\1<WaveFormData>!!not-b64", "not valid base64"),
    (rhythm(r"<WaveFormData>"), r"\1<WaveFormData>AAA", "not valid base64"),
    (rhythm(r"<WaveFormData>"), r"\1<WaveFormData>AAAA", "odd number of WaveFormData bytes"),
    (rhythm(r"<WaveFormData>"), r"\1<WaveFormData>AAAAAAAA", "wrong number of bytes"),
    (rhythm(r"<LeadSampleCountTotal>5000<"), r"\1<LeadSampleCountTotal>4999<",
     "wrong number of samples"),
    (rhythm(r"<LeadAmplitudeUnits>MICROVOLTS<"), r"\1<LeadAmplitudeUnits>FURLONGS<",
     "unknown LeadAmplitudeUnits"),
    (rhythm(r"<LeadAmplitudeUnitsPerBit>4.88<"), r"\1<LeadAmplitudeUnitsPerBit>-1<",
     "invalid LeadAmplitudeUnitsPerBit"),
    (rhythm(r"<LeadSampleSize>2<"), r"\1<LeadSampleSize>4<", "unsupported LeadSampleSize"),
    (rhythm(r"<SampleBase>500<"), r"\1<SampleBase>5<", "implausible Rhythm sampling rate"),
    (rhythm(r"<SampleBase>500<"), r"\1<SampleBase>fast<", "invalid SampleBase"),
    (r"<WaveformType>Rhythm<", "<WaveformType>Median<", "no Rhythm waveform"),
    (r"<RestingECG>", "<CardiologyXML>", "not well-formed XML"),
])
def test_malformed_file_is_refused_with_its_name(good_xml: Path, pattern: str, replacement: str,
                                                 fragment: str) -> None:
    assert_error(edited(good_xml, pattern, replacement), fragment)


def test_wrong_root_and_leads_of_different_lengths(tmp_path: Path, good_xml: Path,
                                                  ecg500: np.ndarray) -> None:
    other = tmp_path / "other.xml"
    other.write_text("<CardiologyXML></CardiologyXML>")
    assert_error(other, "expected root element <RestingECG>; found <CardiologyXML>")
    short = base64.b64encode(np.zeros(4000, "<i2").tobytes()).decode()
    bad = edited(good_xml, rhythm(r"<LeadByteCountTotal>10000</LeadByteCountTotal>"
                                  r"(\s*<LeadTimeOffset>0</LeadTimeOffset>\s*)"
                                  r"<LeadSampleCountTotal>5000<(.*?)<WaveFormData>[^<]*<"),
                 rf"\1<LeadByteCountTotal>8000</LeadByteCountTotal>\2<LeadSampleCountTotal>4000<"
                 rf"\3<WaveFormData>{short}<")
    assert_error(bad, "leads have different lengths")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE RestingECG [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<RestingECG><MuseInfo>&lol3;</MuseInfo></RestingECG>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE RestingECG [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<RestingECG><MuseInfo>&secret;</MuseInfo></RestingECG>
"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_entity_bomb_and_external_entity_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "attack.xml"
    path.write_text(text)
    assert_error(path, "entity expansion / external reference refused")


def test_huge_file_is_refused_before_parsing(good_xml: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import ecgcmr.convert.muse_xml as muse

    monkeypatch.setattr(muse, "MAX_XML_BYTES", 1000)
    assert_error(good_xml, "XML file too large")
    assert safe_xml.MAX_XML_BYTES == 32 * 2**20


def test_convert_names_the_file_and_writes_nothing(good_xml: Path, tmp_path: Path) -> None:
    bad = edited(good_xml, rhythm(r"<LeadAmplitudeUnits>MICROVOLTS<"),
                 r"\1<LeadAmplitudeUnits>?<")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        convert_muse_xml(bad, tmp_path / "wfdb", "rec")
    assert not (tmp_path / "wfdb" / "rec.hea").exists()
