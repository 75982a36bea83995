"""The ``ecgcmr`` command: synth, validate, preprocess, reproduce.

Each sub-command is a thin wrapper over a package function, so everything it does can also be
done from Python or a notebook.
"""

from __future__ import annotations

import argparse
import ast
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ecgcmr.constants import DEFAULT_SYSTOLIC_COUPLING
from ecgcmr.errors import DataError, OutputError
from ecgcmr.runs import DATA_DIR


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["ecgcmr", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except DataError as exc:  # bad input: a clear message, no traceback
        print(f"ecgcmr: error: {exc}", file=sys.stderr)
        return 2
    except OutputError as exc:  # the output failed (read-only, disk full): one line
        print(f"ecgcmr: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # any other file-system failure: the path and the reason
        print(f"ecgcmr: error: {OutputError.from_os_error(exc, fallback='?')}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    from ecgcmr.config import PROFILES
    from ecgcmr.data.dataset import CMR_AUGMENTS
    from ecgcmr.methods import ALIGNED, PHASES
    from ecgcmr.stages import DEFAULT_CMR_AUGMENT

    parser = argparse.ArgumentParser(prog="ecgcmr", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="generate the synthetic paired ECG-CMR cohort")
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny")
    p.add_argument("--out", required=True, type=Path, help="cohort folder (created)")
    p.add_argument("--n", type=int, default=None, help="number of subjects (default: profile)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed")
    p.add_argument("--systolic-coupling", type=float, default=DEFAULT_SYSTOLIC_COUPLING,
                   help="how much LVEF reaches the ECG: 1 the default world, 0 none (the "
                        "negative control of the dual-phase claim), > 1 amplified")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.set_defaults(func=_synth)

    p = sub.add_parser("validate", help="validate a manifest; lists every problem by subject")
    p.add_argument("manifest", type=Path)
    p.add_argument("--checksums", action="store_true", help="verify *_sha256 columns")
    _kind_arg(p)
    p.set_defaults(func=_validate)

    p = sub.add_parser("preprocess", help="build the preprocessing cache of a manifest")
    p.add_argument("--manifest", required=True, type=Path)
    _kind_arg(p)
    p.add_argument("--cmr-only", action="store_true",
                   help="the same as --kind cmr_only: accept subjects without an ECG (e.g. an "
                        "ACDC/M&Ms manifest, for stage A); they never enter an ECG stage")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="default: data/cache/<manifest folder>-<hash of the settings>, "
                        "where the notebooks and `ecgcmr pretrain` look")
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny",
                   help="sets the CMR grid")
    _notch_arg(p)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_preprocess)

    p = sub.add_parser("pretrain", help="train one pretraining stage (works under torchrun)")
    p.add_argument("stage", choices=["cmr", "ecg", "align"],
                   help="A: CMR phase encoder, B: ECG masked autoencoder, C: alignment")
    _data_args(p)
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default for cmr/ecg: data/models/<cache>/<stage>-...)")
    p.add_argument("--phase", choices=PHASES, default="ed", help="stage A: which phase")
    p.add_argument("--method", choices=ALIGNED, default="dual", help="stage C")
    p.add_argument("--ecg-encoder", choices=["vit", "cnn"], default="vit")
    p.add_argument("--init-ed", type=Path, help="stage C: stage-A ED best.pt")
    p.add_argument("--init-es", type=Path, help="stage C: stage-A ES best.pt")
    p.add_argument("--init-ecg", type=Path, help="stage C: stage-B best.pt (else random init)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch (default: the profile's)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--channels-last", action="store_true",
                   help="channels_last_3d layout for the 3D convolutions (GPU speed option)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--cmr-augment", choices=CMR_AUGMENTS, default=None,
                   help="CMR training augmentation (default, by stage: " + ", ".join(
                       f"{stage} {augment}" for stage, augment in DEFAULT_CMR_AUGMENT.items())
                   + ")")
    p.add_argument("--trunk-cache", choices=["auto", "on", "off"], default="auto",
                   help="stage C: read the frozen CMR trunks' outputs from a cache built once "
                        "per stage-A checkpoint (auto: where smaller than the volumes)")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("weights", help="train and export the shipped weights of one training "
                                       "seed (every stage every method needs), with its card")
    _data_args(p)
    p.set_defaults(profile="teaching")
    p.add_argument("--seed", type=int, default=0, help="training seed of the set")
    p.add_argument("--methods", default="dual,ed,es,ecg_only",
                   help="comma-separated methods the set serves (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None,
                   help="weights root (default: the package's ecgcmr/weights)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where stages train, resumable (default: data/weights-work/<cache>)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_weights)

    p = sub.add_parser("embed", help="frozen ECG embeddings of every subject -> parquet")
    _data_args(p)
    p.add_argument("--checkpoint", type=Path, help="stage-B or stage-C best.pt")
    p.add_argument("--random", action="store_true", help="a random encoder (the floor)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output .parquet")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_embed)

    p = sub.add_parser("reproduce", help="run the notebook series into a run folder")
    p.add_argument("--profile", choices=sorted(PROFILES), default="teaching")
    p.add_argument("--run-dir", default=None,
                   help="run folder (default: runs/<timestamp>); an existing one is resumed")
    p.add_argument("--workers", type=int, default=2, help="processes for data preparation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any notebook parameter, e.g. --set cohort_seed=1 (None: "
                        "an optional one's 'not set'); comma-separated values make a grid: "
                        "--set seed=1,2,3 --set method=dual,ed (quoted, one value: "
                        "--set 'balanced_seeds=\"0,1\"')")
    p.add_argument("--compare", action="store_true",
                   help="the paper's comparison (what `make reproduce` runs): a grid of every "
                        "method shipped for --profile plus random (and the classical "
                        "baseline), on every shipped training seed, with the shipped weights")
    p.add_argument("--jobs", type=int, default=1, help="grid cells run in parallel")
    p.add_argument("--until", default="99", metavar="NN",
                   help="run the notebooks up to this number only (e.g. 01: data preparation)")
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("publish", help="re-render the README's generated result tables from "
                                       "the committed files under results/")
    p.add_argument("files", nargs="*", type=Path,
                   default=[Path("README.md"), Path("docs") / "controls.md"])
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a generated block is stale")
    p.add_argument("--comparison", type=Path, default=None, metavar="GRID",
                   help="first replace results/comparison/ with the summary tables of this "
                        "grid (or run) folder, e.g. runs/default of `make reproduce`")
    p.set_defaults(func=_publish)

    _predict_parser(sub)
    _manifest_parsers(sub)
    _convert_parsers(sub)
    return parser


def _publish(args: argparse.Namespace) -> int:
    from ecgcmr.files import project_root, resolve
    from ecgcmr.publish import publish

    files = [resolve(f) for f in args.files]
    if args.comparison is not None:
        if args.check:
            raise SystemExit("ecgcmr: error: --comparison writes results/comparison/; "
                             "it cannot be combined with --check")
        from ecgcmr.publish import export_comparison

        print(f"{export_comparison(resolve(args.comparison), project_root())}: exported")
    stale = publish(files, project_root(), check=args.check)
    for file in stale:
        print(f"{file}: {'stale' if args.check else 'updated'}")
    if not args.check:
        from ecgcmr.publish import control_figure

        figure = control_figure(project_root())
        if figure is not None:
            print(f"{figure}: drawn")
    return 1 if args.check and stale else 0


def _data_args(p: argparse.ArgumentParser) -> None:
    from ecgcmr.config import PROFILES

    p.add_argument("--manifest", default=None, help="manifest (default: the profile's synthetic "
                   "cohort in --data-dir)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="tiny")
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--n-subjects", type=int, default=None,
                   help="synthetic cohort size (default: the profile's)")
    p.add_argument("--cohort-seed", type=int, default=0)
    p.add_argument("--systolic-coupling", type=float, default=DEFAULT_SYSTOLIC_COUPLING,
                   help="which synthetic world (see `ecgcmr synth --help`)")
    _notch_arg(p)


def _notch_arg(p: argparse.ArgumentParser) -> None:
    from ecgcmr.data.ecg import EcgPreprocessing

    p.add_argument("--notch-hz", type=float, default=EcgPreprocessing().notch_hz,
                   help="mains notch frequency of the cache (50 UK/Europe, 60 Americas; 0 "
                        "disables; default: %(default)s)")


def _cache_spec(args: argparse.Namespace):  # noqa: ANN202 - returns ecgcmr.data.CacheSpec
    from ecgcmr.config import get_profile

    return get_profile(args.profile).cache_spec(notch_hz=args.notch_hz or None)


def _open_cache(args: argparse.Namespace):  # noqa: ANN202 - returns ecgcmr.data.Cache
    from ecgcmr.runs import locate_cache, locate_manifest

    manifest = locate_manifest(args.manifest, profile=args.profile, n_subjects=args.n_subjects,
                               cohort_seed=args.cohort_seed, data_dir=args.data_dir,
                               systolic_coupling=args.systolic_coupling)
    return locate_cache(manifest, _cache_spec(args), args.data_dir)


def _pretrain(args: argparse.Namespace) -> int:
    from ecgcmr import distributed as dist
    from ecgcmr.config import get_profile
    from ecgcmr.files import resolve
    from ecgcmr.pretrain import train_stage
    from ecgcmr.stages import stage_dir

    dist.setup_from_env()   # a no-op unless started by torchrun
    try:
        cache = _open_cache(args)
        extra = {"phase": args.phase} if args.stage == "cmr" else \
            {"method": args.method, "ecg_encoder": args.ecg_encoder} if args.stage == "align" \
            else {}
        cfg = get_profile(args.profile).stage_config(
            args.stage, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
            cmr_augment=args.cmr_augment, **extra)
        if args.stage == "align":
            if not (args.init_ed or args.init_es) or args.out is None:
                raise SystemExit("ecgcmr pretrain align needs --out and the stage-A checkpoints "
                                 "(--init-ed / --init-es) its method uses")
        out = args.out or stage_dir(resolve(args.data_dir) / "models" / cache.root.name, cfg)
        init = {k: v for k, v in (("ed", args.init_ed), ("es", args.init_es),
                                  ("ecg", args.init_ecg)) if v is not None}
        result = train_stage(cache, cfg, out, init=init, resume=not args.no_resume,
                             device=args.device, num_workers=args.num_workers,
                             channels_last=args.channels_last, compile_model=args.compile,
                             trunk_cache=args.trunk_cache)
        if dist.is_main():
            print(f"{args.stage}: best validation loss {result.best_val_loss:.4f} at epoch "
                  f"{result.best_epoch + 1}; checkpoint {result.out_dir / 'best.pt'}")
    finally:
        dist.cleanup()
    return 0


def _weights(args: argparse.Namespace) -> int:
    from ecgcmr.files import resolve
    from ecgcmr.methods import get_method
    from ecgcmr.pretrained import WEIGHTS_ROOT, train_weight_set
    from ecgcmr.runs import provenance

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)                           # an unknown name: one clear error
    cache = _open_cache(args)
    work = args.work_dir or resolve(args.data_dir) / "weights-work" / cache.root.name
    command = (f"ecgcmr weights --profile {args.profile} --seed {args.seed} "
               f"--methods {','.join(methods)}")
    folder = train_weight_set(cache, args.profile, args.seed, methods, work_dir=work,
                              command=command, provenance=provenance(),
                              root=args.out or WEIGHTS_ROOT, device=args.device)
    print(f"weights of seed {args.seed} ({', '.join(methods)}): {folder} "
          f"(card: {folder / 'MODEL_CARD.md'})")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from ecgcmr import distributed as dist
    from ecgcmr.config import get_profile
    from ecgcmr.models import build_ecg_encoder
    from ecgcmr.pretrain import embed_ecg, load_ecg_encoder

    cache = _open_cache(args)
    if args.random == (args.checkpoint is not None):
        raise SystemExit("ecgcmr embed needs exactly one of --checkpoint or --random")
    if args.random:
        dist.seed_everything(args.seed)
        encoder = build_ecg_encoder("vit", get_profile(args.profile).model_size)
    else:
        encoder = load_ecg_encoder(args.checkpoint)
    emb = embed_ecg(encoder, cache, device=args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    emb.to_parquet(args.out, index=False)
    print(f"{len(emb)} subjects x {emb.shape[1] - 2} features -> {args.out}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from ecgcmr.synth.cohort import cohort_spec, generate_cohort

    spec = cohort_spec(args.profile, seed=args.seed, n_subjects=args.n,
                       systolic_coupling=args.systolic_coupling)
    manifest = generate_cohort(args.out, spec, workers=args.workers)
    print(f"wrote {spec.n_subjects} subjects; manifest: {manifest}")
    return 0


def _kind_arg(p: argparse.ArgumentParser) -> None:
    from ecgcmr.data.manifest import KINDS

    p.add_argument("--kind", choices=KINDS, default=None,
                   help="paired (ECG + ED/ES CMR), ecg_only or cmr_only; default: the "
                        "manifest's kind column, else told from which paths it fills")


def _validate(args: argparse.Namespace) -> int:
    from ecgcmr.data.manifest import read_manifest

    df = read_manifest(args.manifest, args.kind, verify_checksums=args.checksums)
    print(f"{args.manifest}: {len(df)} subjects, valid ({df.attrs['kind']}); splits "
          + ", ".join(f"{k}={v}" for k, v in df["split"].value_counts().sort_index().items()))
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from ecgcmr.data.cache import build_cache
    from ecgcmr.data.manifest import read_manifest
    from ecgcmr.runs import cache_dir_for

    spec = _cache_spec(args)
    folder = args.cache_dir or cache_dir_for(args.manifest, spec.to_json(), args.data_dir)
    if args.cmr_only and args.kind not in (None, "cmr_only"):
        raise SystemExit(f"ecgcmr: --cmr-only contradicts --kind {args.kind}")
    kind = "cmr_only" if args.cmr_only else args.kind
    manifest = read_manifest(args.manifest, kind)
    cache = build_cache(manifest, folder, spec, workers=args.workers)
    n_bad = int((~cache.index["ok"]).sum())
    print(f"cache {folder} ({manifest.attrs['kind']}): {len(cache.index) - n_bad} subjects ok, "
          f"{n_bad} rejected (see {Path(folder) / 'qc_report.csv'})")
    return 0


def parse_assignments(items: Sequence[str]) -> dict[str, object]:
    """``["seed=1", "notch_hz=60.0", "method=dual,ed"]`` -> typed values (Python literals,
    else strings); a comma-separated value becomes a list: a grid axis, unless it is quoted
    (``'balanced_seeds="0,1,2"'`` is one string)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"ecgcmr: --set expects KEY=VALUE, got {item!r}")
        whole = _literal(raw)
        values = [whole] if isinstance(whole, str) and whole != raw else \
            [_literal(v) for v in raw.split(",")]
        out[key.strip()] = values if len(values) > 1 else values[0]
    return out


def _literal(raw: str) -> object:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _reproduce(args: argparse.Namespace) -> int:
    from ecgcmr import runs

    assigned = parse_assignments(args.set)
    if args.compare:
        from ecgcmr.pretrained import comparison_grid

        try:
            methods, seeds = comparison_grid(args.profile)
        except ValueError as exc:
            raise SystemExit(f"ecgcmr: error: {exc}") from None
        assigned = {"method": methods, "seed": seeds, **assigned}
    params = {"profile": args.profile, "workers": args.workers, **assigned}
    try:
        runs.check_params(params)
    except DataError:           # no notebooks to read the parameters from: main() reports it
        raise
    except ValueError as exc:   # a parameter no notebook declares, or a value of a wrong type
        raise SystemExit(f"ecgcmr: error: {exc}") from None
    if any(isinstance(v, list) for v in params.values()):
        grid = runs.run_path(args.run_dir)
        print(f"grid folder: {grid}")
        cells = runs.run_grid(grid, params, jobs=args.jobs, until=args.until,
                              name_keys=list(assigned), command=args.command_line)
        for name, state in cells.items():
            print(f"  {name}: {state}")
        print(f"summary: {grid / 'summary.csv'}; report: {grid / 'index.html'}")
        return 1 if "failed" in cells.values() else 0
    run = runs.new_run_dir(args.run_dir)
    print(f"run folder: {run}")
    result = runs.run_series(run, params, runs.notebook_series(until=args.until))
    for name, state in result.items():
        print(f"  {name}: {state}")
    return 1 if "failed" in result.values() else 0


# --- ecgcmr predict -----------------------------------------------------------------------------


def _predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="phenotype predictions for 12-lead ECGs with a trained encoder",
        description="Predict the image-derived phenotypes of every ECG among the inputs with "
                    "the ECG encoder of --checkpoint and a linear probe per phenotype (notebook "
                    "03's). The inputs are WFDB records (a record path, its .hea or its signal "
                    "file, e.g. a PhysioNet/CinC .mat with its .hea) or folders of them; other "
                    "formats (DICOM, GE MUSE or CardioSoft XML) are converted first with "
                    "`ecgcmr convert ecg`. One row per recording with qc_ok and qc_reason: a "
                    "record failing QC gets its reason and no prediction, the others go on. The "
                    "head (head.json) is read from --head when that file exists; otherwise it is "
                    "fitted on the training split of the cache of --manifest (or --cache-dir) "
                    "and written to --head, or beside --out. The model card is printed and "
                    "written beside --out; weights trained on synthetic data say so in the "
                    "CSV's first line.")
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="stage-B/C best.pt (or a shipped .pt), or a run folder of notebook 02")
    p.add_argument("--ecg", required=True, nargs="+", type=Path, metavar="INPUT",
                   help="WFDB records or folders of them")
    p.add_argument("--out", required=True, type=Path, help="predictions CSV")
    p.add_argument("--head", type=Path, default=None,
                   help="head.json to use (or to write when it does not exist; default: "
                        "head.json beside --out)")
    _data_args(p)
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="fit the head on this finished cache instead of locating one from "
                        "--manifest/--profile/--data-dir")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe's CV folds")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    import json

    from ecgcmr import predict as pr

    encoder, card = pr.load_encoder(args.checkpoint)
    head_path = args.head or args.out.with_name("head.json")
    if args.head is not None and args.head.is_file():
        head = pr.read_head(args.head)
        if head["encoder"]["weights_digest"] != card["weights_digest"]:
            raise DataError("the head was fitted on the embeddings of another encoder",
                            path=args.head, expected=f"weights digest {card['weights_digest']}",
                            found=str(head["encoder"]["weights_digest"]))
    else:
        if args.cache_dir is not None:
            from ecgcmr.data.cache import open_cache

            cache, manifest = open_cache(args.cache_dir), None
        else:
            from ecgcmr.runs import locate_manifest

            cache = _open_cache(args)
            manifest = locate_manifest(args.manifest, profile=args.profile,
                                       n_subjects=args.n_subjects, cohort_seed=args.cohort_seed,
                                       data_dir=args.data_dir,
                                       systolic_coupling=args.systolic_coupling)
        head = pr.head_for_cache(encoder, card, cache, seed=args.seed, device=args.device,
                                 manifest_path=manifest)
        pr.write_head(head, head_path)
        print(f"head: linear probes of {', '.join(head['targets'])} fitted on the training "
              f"split of {cache.root} -> {head_path}")
    records, bad = pr.find_records(args.ecg)
    table = pr.predict_records(records, encoder, head, device=args.device, bad_inputs=bad,
                               progress=not args.no_progress)
    model_card = pr.model_card(card, head)
    card_path = pr.write_predictions(table, args.out, model_card)
    print(json.dumps(model_card, indent=2, default=str))
    n_ok = int(table["qc_ok"].sum())
    print(f"{n_ok} of {len(table)} recordings predicted, {len(table) - n_ok} failed QC "
          f"(qc_reason in {args.out}); model card: {card_path}")
    print(model_card["warning"])
    return 0 if n_ok else 2


# --- ecgcmr manifest ukb|folders ----------------------------------------------------------------


def _manifest_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="build a manifest from real data (UK Biobank or folders)",
                       description="Build manifest.csv (+ build_report.csv listing every subject "
                                   "or file left out, and why) from real data.")
    kinds = p.add_subparsers(required=True, metavar="SOURCE")

    u = kinds.add_parser(
        "ukb", help="UK Biobank bulk ECG (20205) / CMR (20209) files + a tabular export",
        description="Convert the imaging visit's ECG XML and CMR DICOM zips of every "
                    "participant and map the export's fields to the manifest columns (see "
                    "data_manifests/ukb_fields.md). Resumable: rerun to continue.")
    u.add_argument("--bulk-dir", required=True, type=Path, help="folder of the bulk files")
    u.add_argument("--table", required=True, type=Path,
                   help="export with the fields of data_manifests/ukb_fields.md (CSV, TSV/.tab "
                        "or parquet; '24100-2.0' or RAP 'p24100_i2' column names, raw codes)")
    u.add_argument("--out", required=True, type=Path, help="output folder (created)")
    u.add_argument("--censor-date", required=True, metavar="YYYY-MM-DD",
                   help="end of follow-up of the hospital records (incident events)")
    u.add_argument("--ecg-pattern", default="{eid}_20205_2_0.xml",
                   help="ECG file name under --bulk-dir, {eid} = participant id "
                        "(default: %(default)s)")
    u.add_argument("--cmr-pattern", default="{eid}_20209_2_0.zip",
                   help="CMR file name under --bulk-dir (default: %(default)s)")
    u.add_argument("--id-column", default=None, help="participant id column (default: eid, "
                   "f.eid or participant.eid)")
    u.set_defaults(func=_manifest_ukb)

    f = kinds.add_parser(
        "folders", help="any folders of WFDB records + NIfTI ED/ES volumes",
        description="Match files to subjects by name: <id>.hea, <id>_ed.nii.gz, "
                    "<id>_es.nii.gz, optional <id>_ed_seg.nii.gz / <id>_es_seg.nii.gz "
                    "(change with --pattern). Every ECG must hold the 12 standard leads by name. "
                    "--ecg-dir alone makes an ECG-only manifest, --cmr-dir alone a CMR-only one.")
    f.add_argument("--ecg-dir", type=Path, default=None, help="folder of WFDB records")
    f.add_argument("--cmr-dir", type=Path, default=None, help="folder of NIfTI volumes")
    f.add_argument("--out", required=True, type=Path, help="output folder (created)")
    f.add_argument("--table", type=Path, default=None,
                   help="optional CSV/parquet of phenotypes, outcomes, covariates, split")
    f.add_argument("--id-column", default="subject_id", help="id column of --table")
    f.add_argument("--pattern", action="append", default=[], metavar="COLUMN=REGEX",
                   help="file pattern of a manifest column, a regex with a group (?P<id>...) "
                        "matched against the path relative to its folder, e.g. "
                        "--pattern 'cmr_ed_path=(?P<id>[^/]+)/sa_ED\\.nii\\.gz'; "
                        "COLUMN= (empty) switches an optional column off")
    f.set_defaults(func=_manifest_folders)


def _manifest_ukb(args: argparse.Namespace) -> int:
    from ecgcmr.manifests.ukb import build_ukb_manifest

    manifest = build_ukb_manifest(args.bulk_dir, args.table, args.out,
                                  censor_date=args.censor_date, ecg_pattern=args.ecg_pattern,
                                  cmr_pattern=args.cmr_pattern, id_column=args.id_column)
    _print_built(manifest)
    return 0


def _manifest_folders(args: argparse.Namespace) -> int:
    from ecgcmr.manifests.folders import build_folder_manifest

    patterns: dict[str, str | None] = {}
    for item in args.pattern:
        column, sep, regex = item.partition("=")
        if not sep or not column:
            raise SystemExit(f"ecgcmr: --pattern expects COLUMN=REGEX, got {item!r}")
        patterns[column.strip()] = regex or None
    if args.ecg_dir is None and args.cmr_dir is None:
        raise SystemExit("ecgcmr manifest folders needs --ecg-dir, --cmr-dir or both")
    manifest = build_folder_manifest(args.ecg_dir, args.cmr_dir, args.out, table=args.table,
                                     patterns=patterns, id_column=args.id_column)
    _print_built(manifest)
    return 0


def _print_built(manifest: Path) -> None:
    import pandas as pd

    n_subjects = len(pd.read_csv(manifest, usecols=["subject_id"]))
    report = manifest.with_name("build_report.csv")
    n_left_out = len(pd.read_csv(report))
    print(f"manifest: {manifest} ({n_subjects} subjects, valid); {n_left_out} item(s) left out, "
          f"see {report}")


# --- ecgcmr convert ecg -------------------------------------------------------------------------


def _convert_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert real-data files to the project's formats",
                       description="Convert real-data files to the data contract's formats.")
    kinds = p.add_subparsers(required=True, metavar="KIND")
    e = kinds.add_parser(
        "ecg", help="resting 12-lead ECGs (WFDB, PhysioNet/CinC .mat, DICOM, GE MUSE or "
                    "CardioSoft XML) -> one WFDB record each",
        description="Convert every ECG among the inputs (files or folders, searched "
                    "recursively; the format is told from each file's content) into one WFDB "
                    "record per recording (12 named leads in mV) in --out, with "
                    "convert_report.csv listing every input: converted (and the record) or "
                    "skipped (and why). Exit status 0 when anything converted, 2 when nothing "
                    "did.")
    e.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="files or folders")
    e.add_argument("--out", required=True, type=Path, help="output folder (created)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_convert, modality="ecg")
    c = kinds.add_parser(
        "cmr", help="short-axis cine CMR (DICOM zip or files, ACDC patient, M&Ms subject, 4D "
                    "NIfTI) -> ED/ES NIfTI each",
        description="Convert every short-axis cine among the inputs (files or folders, searched "
                    "recursively) into <name>_ed.nii.gz / _es.nii.gz (+ _ed_seg / _es_seg "
                    "where labels are given) in --out, with convert_report.csv listing every "
                    "input: converted (and the frames chosen) or skipped (and why: not CMR, a "
                    "long-axis view ...). 4D NIfTI: ED = frame 0, ES from labels or the images, "
                    "unless <base>.json says {\"ED\": e, \"ES\": s} (0-based). Exit status 0 "
                    "when anything converted, 2 when nothing did.")
    c.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="files or folders")
    c.add_argument("--out", required=True, type=Path, help="output folder (created)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_convert, modality="cmr")


def _convert(args: argparse.Namespace) -> int:
    from ecgcmr.convert.batch import CONVERTED, summary_line

    if args.modality == "ecg":
        from ecgcmr.convert.ecg_any import convert_ecgs as convert
    else:
        from ecgcmr.convert.cmr_any import convert_cmrs as convert
    report = convert(args.inputs, args.out, progress=not args.no_progress)
    print(summary_line(report, args.out))
    return 0 if (report["status"] == CONVERTED).any() else 2
