"""What every batch converter shares (``ecgcmr convert ecg`` and ``ecgcmr convert cmr``): finding
the input files, one report row per input, the report file and the summary line."""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from pathlib import Path

import pandas as pd

from ecgcmr.errors import OutputError

REPORT_NAME = "convert_report.csv"
REPORT_COLUMNS = ("input", "format", "status", "record", "reason")
CONVERTED, SKIPPED = "converted", "skipped"


def report_row(path: Path | str, fmt: str, status: str, *, record: Path | None = None,
               reason: str = "") -> dict:
    """One row of ``convert_report.csv``."""
    return {"input": str(path), "format": fmt, "status": status,
            "record": "" if record is None else str(record), "reason": reason}


def collect_inputs(inputs: Iterable[str | PathLike[str]], out: Path
                   ) -> tuple[list[Path], list[dict]]:
    """Every file named or found under a named folder (sorted, each once), and a report row
    for each input that does not exist. Skipped in a folder: hidden files, the report, and an
    output folder below it (it holds this tool's earlier outputs)."""
    out_resolved = out.resolve()
    files: list[Path] = []
    seen: set[Path] = set()
    missing = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            skip_out = path.resolve() in out_resolved.parents
            found = [p for p in sorted(path.rglob("*")) if p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)
                     and not (skip_out and out_resolved in p.resolve().parents)
                     and p.resolve() != out_resolved / REPORT_NAME]
        elif path.is_file():
            found = [path]
        else:
            missing.append(report_row(path, "", SKIPPED, reason="not found"))
            continue
        for p in found:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                files.append(p)
    return files, missing


def write_report(rows: list[dict], out: Path) -> pd.DataFrame:
    """``out/convert_report.csv`` from the rows; an output that cannot be written is an
    :class:`~ecgcmr.errors.OutputError` naming it."""
    report = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    try:
        out.mkdir(parents=True, exist_ok=True)
        report.to_csv(out / REPORT_NAME, index=False)
    except OSError as exc:
        raise OutputError.from_os_error(exc, fallback=out / REPORT_NAME) from exc
    return report


def summary_line(report: pd.DataFrame, out_dir: str | PathLike[str]) -> str:
    """``converted N of M inputs; K skipped, see <out>/convert_report.csv``."""
    n_done = int((report["status"] == CONVERTED).sum())
    n_skipped = int((report["status"] == SKIPPED).sum())
    return (f"converted {n_done} of {len(report)} inputs; {n_skipped} skipped, "
            f"see {Path(out_dir) / REPORT_NAME}")


def read_head(path: Path, n_bytes: int) -> bytes:
    """The first ``n_bytes`` of a file (what formats are told by); empty if unreadable."""
    try:
        with path.open("rb") as f:
            return f.read(n_bytes)
    except OSError:
        return b""
