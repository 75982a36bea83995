"""What every benchmark script shares: the device line it prints and where its table goes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def describe_device(dev) -> str:  # noqa: ANN001 - a torch.device
    """One line: device name, torch version, CPU thread count (printed by every benchmark)."""
    import torch  # here, not at import: memory.py keeps its launcher free of torch until main

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return f"device: {name} ({dev}) | torch {torch.__version__} | {torch.get_num_threads()} threads"


def device_label(dev) -> str:  # noqa: ANN001 - a torch.device
    """The CSV file-name suffix: ``gpu`` or ``cpu``."""
    return "gpu" if dev.type == "cuda" else "cpu"


def save_table(table: pd.DataFrame, out_dir: str | Path, name: str) -> Path:
    """Write ``table`` to ``<out_dir>/<name>.csv`` (folder created); return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    table.to_csv(path, index=False)
    return path
