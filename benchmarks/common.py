"""Small helpers shared by the benchmark scripts: tables and JSON output."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]  # (no rows: the header)
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nwrote {path}")


def mean_se(values) -> tuple[float | None, float | None]:
    """Mean and standard error of the finite values (None where there are too few)."""
    v = np.array([x for x in values if not np.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None)


def mean_se_text(pair, digits: int = 3) -> str:
    mean, se = pair
    return "-" if mean is None else f"{mean:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")
