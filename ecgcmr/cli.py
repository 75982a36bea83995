"""The ``ecgcmr`` command: synth, validate, preprocess, reproduce.

Each sub-command is a thin wrapper over a package function, so everything it does can also be
done from Python or a notebook.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path

from ecgcmr.errors import DataError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DataError as exc:  # bad input: a clear message, no traceback
        print(f"ecgcmr: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    from ecgcmr.config import PROFILES

    parser = argparse.ArgumentParser(prog="ecgcmr", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="generate the synthetic paired ECG-CMR cohort")
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny")
    p.add_argument("--out", required=True, type=Path, help="cohort folder (created)")
    p.add_argument("--n", type=int, default=None, help="number of subjects (default: profile)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.set_defaults(func=_synth)

    p = sub.add_parser("validate", help="validate a manifest; lists every problem by subject")
    p.add_argument("manifest", type=Path)
    p.add_argument("--checksums", action="store_true", help="verify *_sha256 columns")
    p.set_defaults(func=_validate)

    p = sub.add_parser("preprocess", help="build the preprocessing cache of a manifest")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--cache-dir", required=True, type=Path)
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny",
                   help="sets the CMR grid")
    p.add_argument("--notch-hz", type=float, default=50.0,
                   help="mains notch frequency (50 UK/Europe, 60 Americas; 0 disables)")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_preprocess)

    p = sub.add_parser("reproduce", help="run the notebook series into a run folder")
    p.add_argument("--profile", choices=sorted(PROFILES), default="teaching")
    p.add_argument("--run-dir", default=None,
                   help="run folder (default: runs/<timestamp>); an existing one is resumed")
    p.add_argument("--workers", type=int, default=2, help="processes for data preparation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any notebook parameter, e.g. --set cohort_seed=1")
    p.set_defaults(func=_reproduce)
    return parser


def _synth(args: argparse.Namespace) -> int:
    from ecgcmr.config import get_profile
    from ecgcmr.synth.cohort import generate_cohort

    spec = get_profile(args.profile).cohort_spec(seed=args.seed, n_subjects=args.n)
    manifest = generate_cohort(args.out, spec, workers=args.workers)
    print(f"wrote {spec.n_subjects} subjects; manifest: {manifest}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from ecgcmr.data.manifest import read_manifest

    df = read_manifest(args.manifest, verify_checksums=args.checksums)
    print(f"{args.manifest}: {len(df)} subjects, valid; splits "
          + ", ".join(f"{k}={v}" for k, v in df["split"].value_counts().sort_index().items()))
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from ecgcmr.config import get_profile
    from ecgcmr.data.cache import build_cache
    from ecgcmr.data.manifest import read_manifest

    spec = get_profile(args.profile).cache_spec(notch_hz=args.notch_hz or None)
    cache = build_cache(read_manifest(args.manifest), args.cache_dir, spec, workers=args.workers)
    n_bad = int((~cache.index["ok"]).sum())
    print(f"cache {args.cache_dir}: {len(cache.index) - n_bad} subjects ok, {n_bad} rejected "
          f"(see {Path(args.cache_dir) / 'qc_report.csv'})")
    return 0


def parse_assignments(items: Sequence[str]) -> dict[str, object]:
    """``["seed=1", "notch_hz=60.0", "manifest=a.csv"]`` -> typed values (literals, else str)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"ecgcmr: --set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


def _reproduce(args: argparse.Namespace) -> int:
    from ecgcmr.runs import new_run_dir, run_series

    params = {"profile": args.profile, "workers": args.workers, **parse_assignments(args.set)}
    run = new_run_dir(args.run_dir)
    print(f"run folder: {run}")
    result = run_series(run, params)
    for name, state in result.items():
        print(f"  {name}: {state}")
    return 1 if "failed" in result.values() else 0
