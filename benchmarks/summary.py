"""The one summary-row format shared by the benchmark scripts and run_all.py."""

from __future__ import annotations

from typing import Any


def row(what: str, ours: float, baseline: float, unit: str, ours_name: str, baseline_name: str) -> dict[str, Any]:
    """One summary row; ratio = baseline / ours (times faster), for time-like units."""
    return {
        "what": what,
        "ours": f"{ours:.4g} {unit}" + (f" ({ours_name})" if ours_name else ""),
        "baseline": f"{baseline:.4g} {unit} ({baseline_name})",
        "ratio": baseline / ours if ours > 0 else float("nan"),
    }
