"""Bad-input corpus: each malformed file gets a DataError naming the file and the problem, or a
QC rejection with its reason; inputs that are merely unusual must load.

Complements test_data_ecg.py, test_data_cmr.py, test_manifest.py and test_cache_dataset.py,
which already cover: missing/truncated header, missing sampling rate, missing and duplicated
leads, unknown units, short records, NaN samples, flat/clipped/out-of-range leads, 250/360/
1000 Hz resampling, µV and V units, corrupt/truncated NIfTI, 2D and 4D volumes, empty and NaN
volumes, singular affines, oblique and anisotropic stacks, duplicate ids and missing files in a
manifest, and a two-subject QC report. Everything here is what those files do not test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import wfdb

from ecgcmr.config import get_profile
from ecgcmr.constants import ECG_FS_HZ, LEADS
from ecgcmr.data import build_cache, read_manifest
from ecgcmr.data.cmr import load_cmr_canonical, load_labels_canonical, read_cmr
from ecgcmr.data.ecg import load_ecg, qc_ecg, read_ecg
from ecgcmr.data.manifest import ManifestError
from ecgcmr.errors import DataError
from ecgcmr.synth.cohort import cohort_spec, generate_cohort

GAIN = 1000.0  # ADC steps per mV (1 µV per step)


def ecg_signal(fs: float = ECG_FS_HZ, seconds: float = 10.0) -> np.ndarray:
    """(n, 12) mV: a distinct smooth waveform per lead; III, aVR, aVL, aVF formed from I and II
    as an electrocardiograph does (Einthoven, Goldberger: QC checks them)."""
    t = np.arange(round(fs * seconds)) / fs
    x = 0.8 * np.sin(2 * np.pi * np.linspace(1.1, 9.7, 12) * t[:, None] + np.arange(12))
    x[:, 2], x[:, 3] = x[:, 1] - x[:, 0], -(x[:, 0] + x[:, 1]) / 2
    x[:, 4], x[:, 5] = x[:, 0] - x[:, 1] / 2, x[:, 1] - x[:, 0] / 2
    return x


def write_record(folder: Path, name: str, signal: np.ndarray, *, names: list[str] | None = None,
                 units: list[str] | None = None, gains: list[float] | None = None) -> Path:
    """WFDB format 16 at 500 Hz; returns the ``.hea`` path."""
    n = signal.shape[1]
    wfdb.wrsamp(record_name=name, fs=ECG_FS_HZ, units=units or ["mV"] * n,
                sig_name=names or list(LEADS), p_signal=signal, fmt=["16"] * n,
                adc_gain=gains or [GAIN] * n, baseline=[0] * n, write_dir=str(folder))
    return folder / f"{name}.hea"


def assert_ecg_error(path: Path, *fragments: str, file: str | None = None) -> str:
    """load_ecg raises a DataError naming subject, file and every fragment."""
    with pytest.raises(DataError) as info:
        load_ecg(path, subject="B1")
    message = str(info.value)
    assert "subject B1" in message and (file or path.name) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- ECG: the signal file ----------------------------------------------------------------------


def test_truncated_dat_file(tmp_path: Path) -> None:
    hea = write_record(tmp_path, "trunc", ecg_signal())
    dat = tmp_path / "trunc.dat"
    dat.write_bytes(dat.read_bytes()[:50_000])  # 12 leads x 5000 samples x 2 bytes = 120,000
    assert_ecg_error(hea, "truncated", "120000 bytes", "found 50000 bytes", file="trunc.dat")


def test_missing_dat_file(tmp_path: Path) -> None:
    hea = write_record(tmp_path, "nodat", ecg_signal())
    (tmp_path / "nodat.dat").unlink()
    assert_ecg_error(hea, "signal file not found", file="nodat.dat")


# --- ECG: corrupt headers ----------------------------------------------------------------------


@pytest.mark.parametrize("gain", ["abc", "0", "nan"])
def test_uncalibrated_gain_is_not_silently_200(tmp_path: Path, gain: str) -> None:
    # wfdb reads a gain it cannot parse, or 0, as 200 steps/mV: 5x too large here, silently
    hea = write_record(tmp_path, "gain", ecg_signal())
    lines = hea.read_text().splitlines()
    assert "1000.0(0)/mV" in lines[2]
    lines[2] = lines[2].replace("1000.0(0)/mV", f"{gain}/mV")  # lead II
    hea.write_text("\n".join(lines) + "\n")
    assert_ecg_error(hea, "uncalibrated lead 'II'", f"found '{gain}'")


def test_garbage_header(tmp_path: Path) -> None:
    hea = tmp_path / "junk.hea"
    hea.write_bytes(b"\x00\xff\xfe binary junk \x01\x02\n" * 4)
    assert_ecg_error(hea, "sampling frequency")


def test_header_signal_count_disagrees_with_its_lines(tmp_path: Path) -> None:
    hea = write_record(tmp_path, "count", ecg_signal())
    hea.write_text(hea.read_text().replace("count 12 ", "count 13 ", 1))
    assert_ecg_error(hea, "unreadable WFDB record")


# --- ECG: lead sets, flat/saturated/non-finite leads ------------------------------------------


def test_eleven_leads(tmp_path: Path) -> None:
    hea = write_record(tmp_path, "eleven", ecg_signal()[:, :11], names=list(LEADS[:11]))
    message = assert_ecg_error(hea, "missing leads: V6")
    assert "V5," not in message.split("expected")[0]  # only the absent lead is listed


def test_lead_duplicated_under_an_alias(tmp_path: Path) -> None:
    names = list(LEADS)
    names[2] = "DII"  # lead II twice (as "II" and as its Spanish spelling); III absent
    hea = write_record(tmp_path, "alias", ecg_signal(), names=names)
    assert_ecg_error(hea, "lead II appears twice")


def test_all_zero_lead(tmp_path: Path) -> None:
    signal = ecg_signal()
    signal[:, 8] = 0.0  # V3 not recorded
    message = assert_ecg_error(write_record(tmp_path, "zero", signal), "flat leads", "V3")
    assert "V4" not in message


def test_lead_railed_at_the_adc_limit(tmp_path: Path) -> None:
    signal = ecg_signal()
    signal[1000:1400, 5] = 32.767  # aVF stuck at format 16's largest value (32767 steps)
    assert_ecg_error(write_record(tmp_path, "rail", signal), "saturated", "aVF")


def test_nan_lead_and_infinite_samples(tmp_path: Path) -> None:
    signal = ecg_signal()
    signal[:, 0] = np.nan  # lead I entirely missing (WFDB invalid-sample code)
    assert_ecg_error(write_record(tmp_path, "nanlead", signal), "NaN or infinite", "leads I ")
    # format 16 cannot store inf; a float source (an XML or array export) can
    x = ecg_signal().T.copy()
    x[10, 100] = np.inf
    assert any("NaN or infinite samples in leads V5" in p for p in qc_ecg(x, ECG_FS_HZ))


def test_mixed_units_load_to_the_same_millivolts(tmp_path: Path) -> None:
    signal = ecg_signal()
    reference, _ = read_ecg(write_record(tmp_path, "mv", signal))
    micro = np.arange(12) % 2 == 1  # every other lead stored in µV
    mixed = signal * np.where(micro, 1000.0, 1.0)
    hea = write_record(tmp_path, "mixed", mixed, units=["uV" if m else "mV" for m in micro],
                       gains=[GAIN / 1000 if m else GAIN for m in micro])
    hea.write_text(hea.read_text(encoding="utf-8").replace("/uV", "/µV"), encoding="utf-8")
    ecg, _ = read_ecg(hea)
    np.testing.assert_allclose(ecg, reference, atol=1e-6)
    np.testing.assert_allclose(load_ecg(hea), signal.T, atol=1e-3)


# --- CMR ---------------------------------------------------------------------------------------

AFFINE = np.array([[0, 0, -1.8, 10.0], [0, -1.8, 0, 20.0], [-10.0, 0, 0, 30.0], [0, 0, 0, 1]])


def volume(dtype: type = np.float32, shape: tuple[int, int, int] = (24, 20, 6)) -> np.ndarray:
    grid = np.indices(shape).sum(axis=0)
    return (100 + 7 * (grid % 13)).astype(dtype)


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return path


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.float64])
def test_integer_and_float64_volumes_load(tmp_path: Path, dtype: type) -> None:
    path = save(tmp_path / "v.nii.gz", volume(dtype))
    array, affine = read_cmr(path)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, volume(np.float32))
    np.testing.assert_allclose(affine, AFFINE, atol=1e-5)


def test_labels_on_the_image_grid_load_in_any_voxel_layout(tmp_path: Path) -> None:
    image = load_cmr_canonical(save(tmp_path / "img.nii.gz", volume()))
    labels = (volume(np.uint8) % 4).astype(np.uint8)
    # the same grid stored with the voxel axes reversed (affine adjusted): still the same grid
    flipped = AFFINE.copy()
    flipped[:3, 0] *= -1
    flipped[:3, 3] = AFFINE[:3, :3] @ [labels.shape[0] - 1, 0, 0] + AFFINE[:3, 3]
    path = save(tmp_path / "seg.nii.gz", labels[::-1].copy(), flipped)
    loaded = load_labels_canonical(path, like=image)
    assert loaded.array.shape == image.array.shape


def test_label_map_on_another_grid_is_an_error(tmp_path: Path) -> None:
    image = load_cmr_canonical(save(tmp_path / "img.nii.gz", volume()))
    labels = np.zeros((24, 20, 6), np.uint8)
    labels[5:10, 5:10, 2:4] = 1
    small = save(tmp_path / "seg_small.nii.gz", labels[:, :16])
    with pytest.raises(DataError) as info:
        load_labels_canonical(small, subject="S3", like=image)
    message = str(info.value)
    assert "seg_small.nii.gz" in message and "S3" in message
    assert "differ in shape" in message and "found (24, 16, 6)" in message
    moved = AFFINE.copy()
    moved[:3, 3] += [0.0, 3.6, 0.0]  # two voxels off
    shifted = save(tmp_path / "seg_shifted.nii.gz", labels, moved)
    with pytest.raises(DataError, match=r"seg_shifted\.nii\.gz.*not on the same voxel grid"):
        load_labels_canonical(shifted, subject="S3", like=image)


# --- manifest ----------------------------------------------------------------------------------


def test_one_file_for_two_subjects_is_reported(tmp_path: Path) -> None:
    for name in ("a.hea", "b.hea", "ed_a.nii.gz", "ed_b.nii.gz", "es.nii.gz"):
        (tmp_path / name).write_text("placeholder")
    pd.DataFrame({"subject_id": ["A", "B"], "ecg_path": ["a", "b"],
                  "cmr_ed_path": ["ed_a.nii.gz", "ed_b.nii.gz"],
                  "cmr_es_path": ["es.nii.gz", "es.nii.gz"]}).to_csv(tmp_path / "m.csv",
                                                                       index=False)
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "m.csv")
    problems = info.value.problems
    assert set(problems["subject_id"]) == {"A", "B"}
    assert set(problems["column"]) == {"cmr_es_path"}
    assert "also used by subject(s) B" in str(info.value)


# --- a cohort with corrupted records through the cache -----------------------------------------

COHORT_N = 20
CORRUPT_FRACTION = 0.05  # of each modality: 1 of 20 ECGs and 1 of 20 CMR studies


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = cohort_spec("tiny", seed=11, n_subjects=COHORT_N)
    return generate_cohort(tmp_path_factory.mktemp("cohort20"), spec, progress=False)


def test_cache_build_survives_corrupted_records(cohort: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cohort"
    shutil.copytree(cohort.parent, folder)
    df = read_manifest(folder / "manifest.csv")
    n_bad = max(1, round(CORRUPT_FRACTION * COHORT_N))  # per modality: >= 1 ECG and 1 CMR
    rng = np.random.default_rng(0)
    picks = rng.choice(len(df), size=2 * n_bad, replace=False)
    bad_ecg, bad_cmr = df.iloc[picks[:n_bad]], df.iloc[picks[n_bad:]]
    for dat in bad_ecg["ecg_path"]:
        path = Path(dat + ".dat")
        path.write_bytes(path.read_bytes()[:1000])       # truncated signal file
    for es in bad_cmr["cmr_es_path"]:
        img = nib.load(es)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), es)  # blank
    cache = build_cache(df, tmp_path / "cache", get_profile("tiny").cache_spec(), progress=False)

    index = cache.index.set_index("subject_id")
    bad = set(bad_ecg["subject_id"]) | set(bad_cmr["subject_id"])
    assert index.loc[sorted(set(df["subject_id"]) - bad), "ok"].all()  # every good record
    assert not index.loc[sorted(bad), "ok"].any()
    qc = pd.read_csv(tmp_path / "cache" / "qc_report.csv", dtype={"subject_id": str})
    assert set(qc["subject_id"]) == bad and len(qc) == len(bad)
    by_subject = qc.set_index("subject_id")
    for sid in bad_ecg["subject_id"]:
        assert by_subject.loc[sid, "modality"] == "ecg"
        assert "WFDB signal file is truncated" in by_subject.loc[sid, "reason"]
        assert by_subject.loc[sid, "reason"].startswith(f"subject {sid}")
    for sid, es in zip(bad_cmr["subject_id"], bad_cmr["cmr_es_path"], strict=True):
        assert by_subject.loc[sid, "modality"] == "cmr_es"
        assert by_subject.loc[sid, "file"] == es
        assert "empty CMR volume" in by_subject.loc[sid, "reason"]


def test_cache_rejects_a_label_map_off_the_image_grid(cohort: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cohort"
    shutil.copytree(cohort.parent, folder)
    df = read_manifest(folder / "manifest.csv").head(2)
    seg = df["cmr_ed_seg_path"].iloc[0]
    img = nib.load(seg)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-8], img.affine), seg)  # cropped map
    cache = build_cache(df, tmp_path / "cache", get_profile("tiny").cache_spec(), progress=False)
    assert list(cache.qc_report["subject_id"]) == [df["subject_id"].iloc[0]]
    assert "label map and image differ in shape" in cache.qc_report["reason"].iloc[0]
