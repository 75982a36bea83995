"""The cache never files one subject's arrays under another, survives any one bad record, and
never leaves half-written output that a later run trusts.

Each test here failed on the cache that addressed arrays by row position (before CACHE_FORMAT
2): a re-sorted manifest there made every subject read another subject's ECG and CMR.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import ecgcmr.data.cache as cache_module
from ecgcmr.cli import main
from ecgcmr.config import get_profile
from ecgcmr.data import build_cache, open_cache, read_manifest
from ecgcmr.errors import DataError, OutputError
from ecgcmr.runs import cache_dir_for, locate_cache

SPEC = get_profile("tiny").cache_spec()


@pytest.fixture(scope="module")
def fresh(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    """The reference: one build of the untouched cohort into an empty folder."""
    return build_cache(read_manifest(tiny_cohort), tmp_path_factory.mktemp("fresh"), SPEC,
                       progress=False)


@pytest.fixture
def cohort(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny cohort; returns its manifest."""
    shutil.copytree(tiny_cohort.parent, tmp_path / "cohort")
    return tmp_path / "cohort" / "manifest.csv"


def preprocess(manifest: Path, data_dir: Path, *extra: str) -> int:
    return main(["preprocess", "--manifest", str(manifest), "--data-dir", str(data_dir),
                 "--profile", "tiny", *extra])


def default_cache(manifest: Path, data_dir: Path):
    return open_cache(cache_dir_for(manifest, SPEC.to_json(), data_dir))


def assert_same_arrays(cache, reference, subjects) -> None:  # noqa: ANN001
    for sid in subjects:
        got, want = cache.arrays_of(sid), reference.arrays_of(sid)
        for field in want:
            np.testing.assert_array_equal(got[field], want[field], err_msg=f"{sid} {field}")


def test_a_resorted_manifest_keeps_every_subject_with_its_own_arrays(cohort: Path,
                                                                     tmp_path: Path,
                                                                     fresh) -> None:
    data = tmp_path / "data"
    assert preprocess(cohort, data) == 0
    table = pd.read_csv(cohort, dtype={"subject_id": str})
    table.iloc[::-1].to_csv(cohort, index=False)           # same path, same subjects
    assert preprocess(cohort, data) == 0
    cache = default_cache(cohort, data)
    assert list(cache.index["subject_id"]) == list(table["subject_id"][::-1])
    assert_same_arrays(cache, fresh, table["subject_id"])
    assert len(cache.ecg) == len(table)                    # every row reused, none rebuilt


def test_extended_shrunk_and_edited_manifests_match_a_fresh_build(cohort: Path, tmp_path: Path,
                                                                  fresh) -> None:
    data = tmp_path / "data"
    table = pd.read_csv(cohort, dtype={"subject_id": str})
    table.head(6).to_csv(cohort, index=False)
    assert preprocess(cohort, data) == 0
    table.to_csv(cohort, index=False)                      # extended
    assert preprocess(cohort, data) == 0
    assert_same_arrays(default_cache(cohort, data), fresh, table["subject_id"])
    table.iloc[3:9].to_csv(cohort, index=False)            # shrunk
    assert preprocess(cohort, data) == 0
    assert_same_arrays(default_cache(cohort, data), fresh, table["subject_id"].iloc[3:9])

    # edit one subject's ES volume in place: same path, new content
    edited = table.iloc[4]
    es_path = cohort.parent / edited["cmr_es_path"]
    img = nib.load(es_path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., ::-1].copy(), img.affine), es_path)
    table.iloc[3:9].to_csv(cohort, index=False)
    assert preprocess(cohort, data) == 0
    cache = default_cache(cohort, data)
    reference = build_cache(read_manifest(cohort), tmp_path / "reference", SPEC, progress=False)
    assert_same_arrays(cache, reference, table["subject_id"].iloc[3:9])
    assert not np.array_equal(cache.arrays_of(edited["subject_id"])["cmr_es"],
                              fresh.arrays_of(edited["subject_id"])["cmr_es"])


def test_a_cache_that_does_not_match_its_manifest_refuses(cohort: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert preprocess(cohort, data) == 0
    locate_cache(cohort, SPEC, data)                       # matches: opens
    table = pd.read_csv(cohort, dtype={"subject_id": str})
    table.iloc[::-1].to_csv(cohort, index=False)
    with pytest.raises(DataError, match="re-ordered.*ecgcmr preprocess"):
        locate_cache(cohort, SPEC, data)
    table.to_csv(cohort, index=False)
    ecg_dat = cohort.parent / (table["ecg_path"].iloc[2] + ".dat")
    ecg_dat.write_bytes(ecg_dat.read_bytes()[::-1])        # edited in place
    with pytest.raises(DataError, match="input file changed") as info:
        locate_cache(cohort, SPEC, data)
    assert table["subject_id"].iloc[2] in str(info.value) and ecg_dat.name in str(info.value)


def test_one_unexpected_failure_is_a_qc_row_and_the_build_goes_on(cohort: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    df = read_manifest(cohort)
    victim = df["subject_id"].iloc[5]
    real = cache_module.load_ecg

    def flaky(path, *, subject=None, **kw):  # noqa: ANN001, ANN003, ANN202
        if subject == victim:
            raise ZeroDivisionError("integer division or modulo by zero")
        return real(path, subject=subject, **kw)

    monkeypatch.setattr(cache_module, "load_ecg", flaky)
    cache = build_cache(df, tmp_path / "cache", SPEC, progress=False)
    assert cache.index["ok"].sum() == len(df) - 1
    (reason,) = cache.qc_report.loc[cache.qc_report["subject_id"] == victim, "reason"]
    assert "ZeroDivisionError" in reason and victim in reason


def test_bad_rates_and_gains_are_rejected_and_everything_else_cached(cohort: Path,
                                                                     tmp_path: Path) -> None:
    table = pd.read_csv(cohort, dtype={"subject_id": str})
    fast, inverted = table["subject_id"].iloc[0], table["subject_id"].iloc[1]
    for sid, edit in ((fast, _set_rate), (inverted, _negate_gain)):
        hea = cohort.parent / (table.set_index("subject_id").loc[sid, "ecg_path"] + ".hea")
        hea.write_text(edit(hea.read_text()))
    assert preprocess(cohort, tmp_path / "data") == 0
    cache = default_cache(cohort, tmp_path / "data")
    qc = cache.qc_report.set_index("subject_id")
    assert set(qc.index) == {fast, inverted}
    assert "3e+06" in qc.loc[fast, "reason"] or "3000000" in qc.loc[fast, "reason"]
    assert "gain" in qc.loc[inverted, "reason"].lower()
    assert cache.index["ok"].sum() == len(table) - 2


def _set_rate(header: str) -> str:
    first, *rest = header.splitlines()
    fields = first.split()
    fields[2] = "3000000"                                  # record name, n signals, fs, ...
    return "\n".join([" ".join(fields), *rest]) + "\n"


def _negate_gain(header: str) -> str:
    first, *rest = header.splitlines()
    out = []
    for line in rest:
        fields = line.split()
        if len(fields) > 2 and "(" not in fields[2]:       # gain[(baseline)][/units]
            gain, _, unit = fields[2].partition("/")
            fields[2] = f"-{gain}" + (f"/{unit}" if unit else "")
        elif len(fields) > 2:
            fields[2] = "-" + fields[2]
        out.append(" ".join(fields))
    return "\n".join([first, *out]) + "\n"


def test_an_output_folder_that_cannot_be_written_is_one_line(cohort: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture
                                                              ) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = preprocess(cohort, tmp_path / "data", "--cache-dir", str(blocker / "cache"))
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "Traceback" not in err
    assert err.startswith("ecgcmr: error: cannot write") and str(blocker) in err


def test_a_read_only_folder_is_one_line(cohort: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    # root can write anywhere, so a read-only file system is simulated at the lock's open()
    def read_only(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro" / ".lock"))

    monkeypatch.setattr("ecgcmr.files.open", read_only, raising=False)
    code = preprocess(cohort, tmp_path / "data", "--cache-dir", str(tmp_path / "ro"))
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "Read-only file system" in err
    assert str(tmp_path / "ro") in err


def test_a_full_disk_leaves_nothing_a_later_run_trusts(cohort: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       fresh) -> None:
    df = read_manifest(cohort)
    monkeypatch.setattr(cache_module, "_COMMIT_EVERY", 3)
    real_add = cache_module._Store.add
    calls = {"n": 0}

    def disk_fills(self, *args):  # noqa: ANN001, ANN002, ANN202
        calls["n"] += 1
        if calls["n"] == 8:   # half a row on disk, then the device is full
            self._files["ecg"].write(b"\0" * 1000)
            self._files["ecg"].flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, *args)

    monkeypatch.setattr(cache_module._Store, "add", disk_fills)
    with pytest.raises(OutputError, match="No space left on device"):
        build_cache(df, tmp_path / "cache", SPEC, progress=False)
    monkeypatch.setattr(cache_module._Store, "add", real_add)
    log = tmp_path / "cache" / "entries.jsonl"
    assert len(log.read_text().splitlines()) == 6          # two commits of 3
    with open(log, "a") as fh:
        fh.write('{"key": "torn')                          # a crash mid-line
    cache = build_cache(df, tmp_path / "cache", SPEC, progress=False)
    assert_same_arrays(cache, fresh, df["subject_id"])
    assert len(cache.ecg) == len(df)                       # the half row was cut off
    assert all(json.loads(line) for line in log.read_text().splitlines())


def test_not_enough_free_space_is_refused_before_writing(cohort: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(cache_module.shutil, "disk_usage",
                        lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OutputError, match=r"not enough free disk space.*GiB is free"):
        build_cache(read_manifest(cohort), tmp_path / "cache", SPEC, progress=False)
    assert not (tmp_path / "cache" / "entries.jsonl").exists()


def test_a_cache_of_the_row_addressed_format_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "ecg.npy", np.zeros((1, 12, 5000), np.float16))
    (tmp_path / "index.csv").write_text("subject_id,row,ok\n")
    with pytest.raises(DataError, match="earlier ecgcmr.*delete the folder"):
        open_cache(tmp_path)


def test_reproduce_without_the_notebooks_says_where_it_looked(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture
                                                              ) -> None:
    monkeypatch.setenv("ECGCMR_HOME", str(tmp_path))
    code = main(["reproduce", "--profile", "tiny", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "no notebook series" in err and str(tmp_path / "notebooks") in err


def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["reproduce", "--profile", "tiny", "--run-dir", str(blocker / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "Traceback" not in err
    assert err.startswith("ecgcmr: error: cannot write") and str(blocker) in err
