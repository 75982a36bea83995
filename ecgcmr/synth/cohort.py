"""Write the synthetic paired cohort to disk: WFDB ECGs, NIfTI CMR at ED/ES, a manifest.

Layout of a cohort folder::

    cohort.json              what was generated (profile, size, seed, versions): resuming with
                             other settings is refused rather than mixing two cohorts
    manifest.csv             one row per subject (paths relative to this folder), validated
    ecg/SYN000001.{hea,dat}  12-lead, 10 s, 500 Hz, mV
    cmr/SYN000001_{ed,es}.nii.gz, cmr/SYN000001_{ed,es}_seg.nii.gz
    latent/latent_state.csv  the generator's hidden truth; for checks of the generator only —
                             no model or notebook downstream reads it
    .rows/SYN000001.json     one finished subject's manifest row (what makes resuming work)

Every subject draws from its own seed, ``SeedSequence([seed, index])``, split into independent
streams for physiology, CMR, ECG and outcomes: the cohort is identical whatever the number of
workers, the order of completion, or where an interrupted run was resumed.
Subjects stream to disk one by one, so memory does not grow with the cohort size.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ecgcmr.config import Profile, get_profile
from ecgcmr.constants import COVARIATES, DEFAULT_SYSTOLIC_COUPLING, ECG_FS_HZ
from ecgcmr.data.cmr import spacing_from_affine
from ecgcmr.data.manifest import assign_splits, read_manifest
from ecgcmr.data.phenotypes import measure_phenotypes
from ecgcmr.data.writers import write_nifti, write_wfdb
from ecgcmr.errors import DataError
from ecgcmr.files import exclusive, write_text_atomic
from ecgcmr.parallel import map_subjects
from ecgcmr.synth.cmr import SaxSpec, render_cmr
from ecgcmr.synth.ecg import simulate_ecg
from ecgcmr.synth.outcomes import sample_outcomes
from ecgcmr.synth.physiology import sample_state

#: Bump when the generator changes what it writes for a given seed.
GENERATOR_VERSION = 1
#: WFDB storage: 16-bit samples at 1 µV per step (as PTB-XL), ±32 mV range.
ECG_ADC_GAIN_PER_MV = 1000.0


@dataclass(frozen=True)
class CohortSpec:
    """What a synthetic cohort is: everything its contents depend on."""

    n_subjects: int                 # number of paired subjects
    seed: int = 0                   # the cohort's seed (not the training seed)
    sax: SaxSpec = field(default_factory=SaxSpec)  # how the CMR stacks are acquired
    generator_version: int = GENERATOR_VERSION
    # how much LVEF reaches the ECG (ecgcmr.constants.DEFAULT_SYSTOLIC_COUPLING): 0 is
    # the negative control of the dual-phase claim, > 1 a positive one
    systolic_coupling: float = DEFAULT_SYSTOLIC_COUPLING

    def __post_init__(self) -> None:
        if self.n_subjects < 1:
            raise ValueError(f"n_subjects must be >= 1, got {self.n_subjects}")
        if not (math.isfinite(self.systolic_coupling) and self.systolic_coupling >= 0):
            raise ValueError(f"systolic_coupling must be a finite number >= 0, got "
                             f"{self.systolic_coupling}")

    def to_json(self) -> dict[str, object]:
        out = json.loads(json.dumps(asdict(self)))  # tuples -> lists, as stored on disk
        if self.systolic_coupling == DEFAULT_SYSTOLIC_COUPLING:
            del out["systolic_coupling"]   # the default world's cohort.json as before
        return out



def cohort_spec(profile: str | Profile, *, seed: int = 0, n_subjects: int | None = None,
                systolic_coupling: float = DEFAULT_SYSTOLIC_COUPLING) -> CohortSpec:
    """The synthetic cohort of a profile (:mod:`ecgcmr.config`): its size (``n_subjects``
    None: the profile's) and its rendered stacks, with a cohort ``seed`` and a control world's
    ``systolic_coupling``."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    return CohortSpec(n_subjects=profile.n_subjects if n_subjects is None else n_subjects,
                      seed=seed, sax=replace(SaxSpec(), **profile.sax),
                      systolic_coupling=systolic_coupling)


def subject_id(index: int) -> str:
    """Synthetic subject ids: SYN000000, SYN000001, ..."""
    return f"SYN{index:06d}"


def generate_cohort(
    out_dir: str | Path,
    spec: CohortSpec,
    *,
    workers: int = 1,
    progress: bool = True,
    split: str | None = None,
) -> Path:
    """Generate (or finish generating) the cohort in ``out_dir``; return the manifest path.

    Already finished subjects are kept, so an interrupted run continues where it stopped.
    With ``split`` (e.g. ``"val"``) only that split's subjects are generated — the same files
    as in the whole cohort, since each subject has its own seed — and the manifest lists
    them (a quick way to check shipped weights against their validation metrics).
    """
    out = Path(out_dir)
    with exclusive(out):
        return _generate(out, spec, workers, progress, split)


def _indices(spec: CohortSpec, split: str | None) -> list[int]:
    ids = pd.Series([subject_id(i) for i in range(spec.n_subjects)])
    if split is None:
        return list(range(spec.n_subjects))
    return [int(i) for i in np.flatnonzero(assign_splits(ids).to_numpy() == split)]


def _generate(out: Path, spec: CohortSpec, workers: int, progress: bool,
              split: str | None = None) -> Path:
    _claim_folder(out, spec)
    for sub in ("ecg", "cmr", "latent", ".rows"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    todo = [i for i in _indices(spec, split) if not _row_file(out, subject_id(i)).is_file()]
    jobs = ((out, spec, i) for i in todo)
    bar = tqdm(total=len(todo), desc="synthetic subjects", unit="subj", disable=not progress)
    with bar:
        # chunks amortise process hand-offs; each subject takes ~0.1 s
        for _ in map_subjects(_generate_one_packed, jobs, workers, chunksize=8):
            bar.update()
    return write_manifest(out, spec, split)


def _generate_one_packed(job: tuple[Path, CohortSpec, int]) -> str:
    return _generate_one(*job)


def _claim_folder(out: Path, spec: CohortSpec) -> None:
    """Write cohort.json, or check that the folder already holds this very cohort."""
    marker = out / "cohort.json"
    wanted = spec.to_json()
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != wanted:
            raise DataError(
                "folder already holds a different synthetic cohort; choose another --out",
                path=marker, expected=json.dumps(wanted), found=json.dumps(found))
        return
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps(wanted, indent=2))


def make_subject(spec: CohortSpec, index: int) -> dict[str, object]:
    """Generate one subject in memory: latent state, ECG, CMR, outcomes, measured phenotypes."""
    streams = np.random.SeedSequence([spec.seed, index]).spawn(4)
    rng_state, rng_cmr, rng_ecg, rng_outcome = (np.random.default_rng(s) for s in streams)
    state = sample_state(rng_state, subject_id(index), systolic_coupling=spec.systolic_coupling)
    cmr = render_cmr(state, rng_cmr, spec.sax)
    ecg = simulate_ecg(state, rng_ecg, fs=ECG_FS_HZ, systolic_coupling=spec.systolic_coupling)
    outcomes = sample_outcomes(state, rng_outcome)
    phenotypes = measure_phenotypes(cmr.labels_ed, cmr.labels_es, spacing_from_affine(cmr.affine))
    return {"state": state, "cmr": cmr, "ecg": ecg, "outcomes": outcomes,
            "phenotypes": phenotypes}


def _generate_one(out: Path, spec: CohortSpec, index: int) -> str:
    sid = subject_id(index)
    subject = make_subject(spec, index)
    state, cmr = subject["state"], subject["cmr"]
    _write_ecg(out / "ecg", sid, subject["ecg"])
    paths = {
        "cmr_ed_path": write_nifti(out, f"cmr/{sid}_ed.nii.gz", cmr.image_ed, cmr.affine),
        "cmr_es_path": write_nifti(out, f"cmr/{sid}_es.nii.gz", cmr.image_es, cmr.affine),
        "cmr_ed_seg_path": write_nifti(out, f"cmr/{sid}_ed_seg.nii.gz", cmr.labels_ed, cmr.affine),
        "cmr_es_seg_path": write_nifti(out, f"cmr/{sid}_es_seg.nii.gz", cmr.labels_es, cmr.affine),
    }
    row = {"subject_id": sid, "ecg_path": f"ecg/{sid}", **paths,
           **{k: _plain(v) for k, v in subject["phenotypes"].items()},
           **{k: _plain(state[k]) for k in COVARIATES},
           **{k: _plain(v) for k, v in subject["outcomes"].items()}}
    record = {"manifest": row, "latent": {k: _plain(v) for k, v in state.items()}}
    # written last: a subject counts as done only once all its files are on disk
    write_text_atomic(_row_file(out, sid), json.dumps(record))
    return sid


def _write_ecg(ecg_dir: Path, sid: str, ecg: np.ndarray) -> None:
    """WFDB format 16, physical units mV, 1 µV per ADC step."""
    write_wfdb(ecg_dir, sid, ecg, ECG_FS_HZ, adc_gain_per_mv=ECG_ADC_GAIN_PER_MV,
               comments=["synthetic ECG generated by ecgcmr (not a real person)"])


def _row_file(out: Path, sid: str) -> Path:
    return out / ".rows" / f"{sid}.json"



def _plain(value: object) -> object:
    """numpy scalars -> Python scalars, so rows serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value


def write_manifest(out: str | Path, spec: CohortSpec, split: str | None = None) -> Path:
    """Assemble manifest.csv and latent/latent_state.csv from the finished subjects (of one
    split only, with ``split``; each keeps the split it has in the whole cohort)."""
    out = Path(out)
    rows, latent = [], []
    every_id = pd.Series([subject_id(i) for i in range(spec.n_subjects)])
    splits = dict(zip(every_id, assign_splits(every_id).to_numpy(), strict=True))
    for i in _indices(spec, split):
        file = _row_file(out, subject_id(i))
        if not file.is_file():
            raise DataError("subject was not generated; rerun `ecgcmr synth` to finish",
                            subject=subject_id(i), path=file)
        record = json.loads(file.read_text())
        rows.append(record["manifest"])
        latent.append(record["latent"])
    manifest = pd.DataFrame(rows)
    manifest["split"] = manifest["subject_id"].map(splits)
    path = out / "manifest.csv"
    manifest.to_csv(path.with_suffix(".csv.tmp"), index=False)
    os.replace(path.with_suffix(".csv.tmp"), path)
    pd.DataFrame(latent).to_csv(out / "latent" / "latent_state.csv", index=False)
    read_manifest(path)  # the cohort must pass the same validation as a user's manifest
    return path
