"""The README's result tables, generated from committed result files — never typed by hand.

A generated block in a Markdown file sits between two markers::

    <!-- BEGIN generated: ceilings -->
    ...
    <!-- END generated: ceilings -->

``ecgcmr publish`` re-renders every block from the files under ``results/`` (each table stamped
with the commit that last changed its source files and the command that made them);
``ecgcmr publish --check`` fails when a block differs from what its files give, and a test runs
that check, so a hand edit or a stale table cannot survive.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from ecgcmr.constants import PHENOTYPES
from ecgcmr.synth.ceilings import CEILINGS_FOLDER, CeilingFile, ceiling_files, committed_ceilings

CONTROLS_FOLDER = Path("results") / "controls"
#: The default run's method comparison (every method, several seeds), exported from its grid.
COMPARISON_FOLDER = Path("results") / "comparison"
#: The control campaign's figure, drawn by :func:`control_figure` (notebook 05 shows it on one world).
COMMITTED_CONTROL_FIGURE = Path("figures") / "control_dual_phase.png"
_BLOCK = re.compile(r"(<!-- BEGIN generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)"
                    r"(<!-- END generated: (?P=name) -->)", re.S)


def _world_ceilings(root: Path) -> dict[float, CeilingFile]:
    """Each world's committed ceilings table (the one with the most subjects)."""
    return {f.coupling: f for f in ceiling_files(root / CEILINGS_FOLDER)}


def render_ceilings(root: Path) -> str:
    """The default world's ceilings per phenotype (R², 95 % CI of the ECG estimate)."""
    file = _world_ceilings(root).get(1.0)
    if file is None:
        return ("_No ceilings committed yet: run_ "
                "`python benchmarks/ceilings.py --n 24600 --seed 1 --systolic-coupling 1 --out "
                f"{CEILINGS_FOLDER}/ceilings-coupling1-n24600-seed1.csv`\n")
    table = pd.read_csv(file.path)
    rows = table.set_index("target").loc[[t for t in PHENOTYPES if t in set(table["target"])]]
    lines = ["| phenotype | upper bound | ECG estimate [95 % CI] | readout ED | readout ES | "
             "readout ED+ES |", "|---|---|---|---|---|---|"]
    for target, r in rows.iterrows():
        lines.append(f"| `{target}` | {r['upper_bound']:.2f} | {r['ecg_estimate']:.2f} "
                     f"[{r['ecg_estimate_ci_low']:.2f}, {r['ecg_estimate_ci_high']:.2f}] | "
                     f"{r['readout_ed']:.2f} | {r['readout_es']:.2f} | {r['readout_dual']:.2f} |")
    return "\n".join(lines) + "\n\n" + _stamp(
        [file.path], f"{file.n:,} generated subjects; {file.command()}") + "\n"


def render_controls(root: Path) -> str:
    """``dual − ed`` and ``dual − es`` (R², paired, across seeds) in each world of the committed
    control runs, beside the idealised readouts' gain in that world."""
    from ecgcmr.synth.controls import control_differences

    folder = root / CONTROLS_FOLDER
    if not folder.is_dir() or not any(folder.iterdir()):
        return "_No control runs committed yet: run the command above._\n"
    table = control_differences(folder)
    readouts = {c: pd.read_csv(f.path).set_index("target")
                for c, f in _world_ceilings(root).items()}
    lines = ["| coupling | target | learned dual − other [95 % CI] (seeds) | ideal readout "
             "dual − other |", "|---|---|---|---|"]
    for _, r in table.sort_values(["systolic_coupling", "target", "versus"]).iterrows():
        world = readouts.get(r["systolic_coupling"])
        ideal = "—"
        if world is not None and r["target"] in world.index:
            c = world.loc[r["target"]]
            ideal = f"{c['readout_dual'] - c['readout_' + r['versus']]:+.3f}"
        lines.append(f"| {r['systolic_coupling']:g} | `{r['target']}` | "
                     f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] "
                     f"(n = {int(r['n_seeds'])}) vs `{r['versus']}` | {ideal} |")
    sources = sorted(folder.glob("*/tables/03_predictions.csv"))
    return "\n".join(lines) + "\n\n" + _stamp(sources, "the exported control runs under "
                                              f"`{CONTROLS_FOLDER}/`") + "\n"


def render_world_ceilings(root: Path) -> str:
    """The functional phenotypes' idealised readouts in every world with committed ceilings:
    what dual-phase alignment could add at best over one phase, by systolic coupling; and the
    calibration row of every table that has it."""
    lines = ["| coupling | target | readout ED | readout ES | readout ED+ES | ED+ES − ED | "
             "ED+ES − ES | subjects |", "|---|---|---|---|---|---|---|---|"]
    sources = []
    for coupling, file in _world_ceilings(root).items():
        table = pd.read_csv(file.path).set_index("target")
        sources.append(file.path)
        for target in ("lvef_pct", "lvesv_ml", "lvedv_ml"):
            r = table.loc[target]
            lines.append(f"| {coupling:g} | `{target}` | {r['readout_ed']:.3f} | "
                         f"{r['readout_es']:.3f} | {r['readout_dual']:.3f} | "
                         f"{r['readout_dual'] - r['readout_ed']:+.3f} | "
                         f"{r['readout_dual'] - r['readout_es']:+.3f} | {file.n:,} |")
    lines += ["", "Detection of reduced EF (LVEF ≤ 35 %) from the ECG, the calibration row "
              "(`ecg_estimate`, AUROC [95 % CI]; published for a CNN on real 12-lead ECGs: "
              "0.93, Attia et al. 2019):", "", "| coupling | AUROC | cases / subjects |",
              "|---|---|---|"]
    for file in ceiling_files(root / CEILINGS_FOLDER):
        table = pd.read_csv(file.path).set_index("target")
        if "reduced_ef_le35" in table.index:
            r = table.loc["reduced_ef_le35"]
            auroc = ("— (no case)" if pd.isna(r["ecg_estimate"]) else
                     f"{r['ecg_estimate']:.3f} [{r['ecg_estimate_ci_low']:.3f}, "
                     f"{r['ecg_estimate_ci_high']:.3f}]")
            lines.append(f"| {file.coupling:g} | {auroc} | {int(r['n_cases'])} / {file.n:,} |")
            sources.append(file.path)
    commands = "; ".join(f"`{f.command()}`" for f in ceiling_files(root / CEILINGS_FOLDER)
                         if f.path in sources)
    return "\n".join(lines) + "\n\n" + _stamp(sources, commands) + "\n"


def export_comparison(results: Path, root: Path) -> Path:
    """Replace ``results/comparison/`` with the summary tables of the grid (or run) folder
    ``results`` (:func:`ecgcmr.evaluate.report.export_tables`) and its ``grid.json`` (the
    command that made it); returns the folder. Earlier comparisons stay in git's history."""
    import shutil

    from ecgcmr.evaluate.report import export_tables

    out = root / COMPARISON_FOLDER
    if out.is_dir():
        shutil.rmtree(out)
    export_tables(results, out)
    if (results / "grid.json").is_file():
        shutil.copy2(results / "grid.json", out / "grid.json")
    return out


#: Columns of the comparison tables, in this order: the paper's method, its ablations, the floor
#: (random) and the hand-crafted baseline.
_METHOD_ORDER = ("dual", "ed", "es", "ecg_only", "random", "classical")
_HEAD_ORDER = ("probe", "mlp", "mlp+covariates")


def render_comparison(root: Path) -> str:
    """The methods compared on the default synthetic cohort, from the exported runs under
    ``results/comparison/``: the generated answer (:func:`ecgcmr.evaluate.answer.answer`), the
    R² of each method's heads (mean ± sd over seeds) beside the ECG-side ceiling, the share of
    that ceiling reached, ``dual`` against each other method (paired, across seeds) and the
    outcomes' balanced AUROC."""
    from ecgcmr.constants import PAPER_PHENOTYPES
    from ecgcmr.evaluate.answer import answer
    from ecgcmr.evaluate.paired import paired_differences, paired_overview
    from ecgcmr.evaluate.report import balanced_mean, collect, has_table, mean_sd

    folder = root / COMPARISON_FOLDER
    if not folder.is_dir() or not has_table(folder, "03_phenotype_metrics"):
        return "_No method comparison is committed yet._\n"
    metrics = collect(folder, "03_phenotype_metrics")
    paper = metrics[(metrics["metric"] == "r2") & metrics["target"].isin(PAPER_PHENOTYPES)]
    paired = (paired_differences(collect(folder, "03_predictions"), n_boot=1000)
              if has_table(folder, "03_predictions") else None)
    ceilings = collect(folder, "03_ceilings") if has_table(folder, "03_ceilings") else None
    table = _in_method_order(mean_sd(paper, ["model", "target"], ["method"]))
    table = table.reindex(sorted(table.index, key=lambda i: _rank(i[0], _HEAD_ORDER)))
    lines = [answer(metrics, paired, ceilings), "",
             "Test-split R² of the paper's phenotypes: the linear probe on the frozen ECG "
             "embedding, the paper's MLP head, and the head with the paper's covariates:", ""]
    has_ceilings = ceilings is not None and not ceilings.empty
    if has_ceilings:
        ceiling = ceilings.groupby("target")["ecg_estimate"].mean()
        table["ECG-side ceiling"] = [f"{ceiling[t]:.3f}" for _, t in table.index]
    lines.append(_markdown(table, "head, phenotype"))
    if table.attrs.get("note"):
        lines += ["", f"_{table.attrs['note']}._"]
    if has_ceilings:
        probe = ceilings[(ceilings["model"] == "probe") & ceilings["target"].isin(PAPER_PHENOTYPES)]
        share = (100 * probe.groupby(["target", "method"])["fraction_of_ecg_estimate"].mean()
                 ).unstack("method").round(0).astype(int).astype(str) + " %"
        lines += ["", "Share of the ECG-side ceiling the probe reaches (mean over seeds):", "",
                  _markdown(_in_method_order(share), "phenotype")]
    if paired is not None and not paired.empty:
        versus = paired_overview(paired[paired["target"].isin(PAPER_PHENOTYPES)], model="probe")
        lines += ["", "`dual` minus each method (probe R²), paired over test subjects and seeds "
                  "(95 % CI; `*` excludes 0" + (f"; {versus.attrs['note']}" if
                                                 versus.attrs.get("note") else
                                                 "; seeds in brackets") + "):", "",
                  _markdown(_in_method_order(versus), "phenotype")]
    shown = [table]   # the tables whose classical column _seedless_note reads
    if has_table(folder, "04_classification_metrics"):
        auroc = mean_sd(balanced_mean(collect(folder, "04_classification_metrics")),
                        ["condition"], ["method"])
        measured = (auroc != "— (0)").any(axis=1)
        lines += ["", "Outcomes: AUROC of the MLP head on the 1:1 balanced test sets (mean of "
                  "the balanced resamplings per seed)" + ("" if measured.all() else
                  "; left out, too few test cases: " + ", ".join(
                      f"`{c}`" for c in auroc.index[~measured])) + ":", "",
                  _markdown(_in_method_order(auroc[measured]), "condition")]
        shown.append(auroc)
    lines += _seedless_note(*shown)
    sources = sorted(folder.glob("*/tables/*.csv"))
    return "\n".join(lines) + "\n\n" + _stamp(sources, _comparison_origin(folder)) + "\n"


def _seedless_note(*tables: pd.DataFrame) -> list[str]:
    """Why the ``classical`` column can read ``± 0.000``, when one of ``tables`` shows it: a
    baseline without an encoder trained per seed can come out the same for every seed."""
    shown = any("classical" in t.columns and t["classical"].astype(str).str.contains(
        "± 0.000", regex=False).any() for t in tables)
    return ["", "_`classical` measures fixed ECG features, with no encoder trained per seed: "
            "only its heads' own seeds (the probe's CV folds, the MLP's initialisation) can "
            "change it between seeds, and the 1:1 balanced test sets are drawn with the same "
            "`balanced_seeds` for every seed; ± 0.000 is where nothing changed._"] if shown else []


def _rank(label: str, order: Sequence[str]) -> int:
    """Position of ``label`` in ``order``; labels it does not name come after, as they were."""
    return order.index(label) if label in order else len(order)


def _in_method_order(table: pd.DataFrame) -> pd.DataFrame:
    return table[sorted(table.columns, key=lambda c: _rank(c, _METHOD_ORDER))]


def _comparison_origin(folder: Path) -> str:
    """What made the exported comparison: the grid's command and the code commit of its runs."""
    import json

    shas = set()
    for path in folder.glob("*/provenance.json"):
        for entry in json.loads(path.read_text()).values():
            shas.add(entry["git_sha"][:7] + ("+dirty" if entry.get("git_dirty") else ""))
    grid = folder / "grid.json"
    command = json.loads(grid.read_text()).get("command") if grid.is_file() else None
    made = f"the runs of `{command}`" if command else "the exported runs"
    return (f"{made} (code commit {', '.join(sorted(shas)) or 'unknown'}), exported to "
            f"`{COMPARISON_FOLDER}/` by `ecgcmr publish --comparison`")


def _markdown(table: pd.DataFrame, index_label: str) -> str:
    def code(name: object) -> str:     # identifiers in code type, words as they are
        return ", ".join(code(n) for n in name) if isinstance(name, tuple) else (
            str(name) if " " in str(name) else f"`{name}`")

    head = f"| {index_label} | " + " | ".join(code(c) for c in table.columns) + " |"
    rule = "|---" * (len(table.columns) + 1) + "|"
    rows = [f"| {code(i)} | " + " | ".join(str(v) for v in r) + " |"
            for i, r in zip(table.index, table.to_numpy(), strict=True)]
    return "\n".join([head, rule, *rows])


RENDERERS: dict[str, Callable[[Path], str]] = {"comparison": render_comparison,
                                                "ceilings": render_ceilings,
                                                "controls": render_controls,
                                                "world-ceilings": render_world_ceilings}


def _stamp(sources: list[Path], what: str) -> str:
    commits = {_last_commit(s) for s in sources}
    commit = ", ".join(sorted(commits)) if commits else "uncommitted"
    return f"_Generated by `ecgcmr publish` from {what} (results commit {commit})._"


def _last_commit(path: Path) -> str:
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h", "--", str(path)],
                             cwd=path.parent, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out or "uncommitted"


def render(text: str, root: Path) -> str:
    """``text`` with every generated block re-rendered."""
    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise KeyError(f"unknown generated block {name!r}; known: {sorted(RENDERERS)}")
        return match.group(1) + RENDERERS[name](root) + match.group(4)

    return _BLOCK.sub(replace, text)


def publish(files: list[Path], root: Path, *, check: bool = False) -> list[Path]:
    """Re-render the generated blocks of ``files``; returns the files that differed (with
    ``check``, nothing is written)."""
    stale = []
    for file in files:
        text = file.read_text()
        new = render(text, root)
        if new != text:
            stale.append(file)
            if not check:
                file.write_text(new)
    return stale


def control_figure(root: Path) -> Path | None:
    """``figures/control_dual_phase.png`` from the committed control runs and the ceilings of
    each world (the figure notebook 05 draws for a control grid); None without control runs.
    The figure's title names the results' commit."""
    from ecgcmr.plots import save_figure
    from ecgcmr.synth.controls import control_differences, plot_control

    folder = root / CONTROLS_FOLDER
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    table = control_differences(folder)
    ceilings = []
    for coupling in sorted(table["systolic_coupling"].unique()):
        found = committed_ceilings(coupling, folder=root / "results" / "ceilings")
        if found is not None:
            ceilings.append(found.assign(systolic_coupling=coupling))
    fig = plot_control(table, pd.concat(ceilings) if ceilings else None)
    commits = sorted({_last_commit(f) for f in folder.glob("*/tables/03_predictions.csv")})
    from ecgcmr.synth.controls import run_parameters

    profiles = sorted(set(run_parameters(folder, ("profile",))["profile"].dropna()))
    fig.suptitle(f"dual-phase controls, {'/'.join(profiles)} profile (results commit "
                 f"{', '.join(commits)})", fontsize=9)
    return save_figure(fig, root / COMMITTED_CONTROL_FIGURE)[0]
