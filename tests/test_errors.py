"""DataError and its subclasses survive pickling (errors raised in worker processes)."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from ecgcmr.data.manifest import ManifestError, Problem
from ecgcmr.errors import DataError


def _raise_manifest_error(path: str) -> None:
    raise ManifestError(path, [Problem("S1", "ecg_path", "file not found")])


def test_data_error_pickles_with_its_fields():
    err = DataError("bad gain", subject="S7", path="/x/S7.hea", expected="> 0", found="0")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is DataError
    assert str(back) == str(err)
    assert (back.subject, back.path, back.expected, back.found) == ("S7", "/x/S7.hea", "> 0", "0")


def test_manifest_error_from_a_worker_process_keeps_its_message_and_problems(tmp_path):
    # before: unpickling ManifestError failed, and the caller saw only BrokenProcessPool
    with ProcessPoolExecutor(max_workers=1) as pool:
        future = pool.submit(_raise_manifest_error, str(tmp_path / "manifest.csv"))
        with pytest.raises(ManifestError) as info:
            future.result()
    assert "S1 [ecg_path]: file not found" in str(info.value)
    assert info.value.problems["subject_id"].tolist() == ["S1"]
