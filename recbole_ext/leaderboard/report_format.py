"""What the leaderboard report and its tuning section share: numbers and configurations as text, file-safe names,
and how a PNG figure is drawn and saved.

It sits below both ``report`` and ``tuning_report`` so that ``report`` can import ``tuning_report`` without the
tuning section importing ``report`` back.
"""
from __future__ import annotations

import math
from pathlib import Path


def fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def fmt_signed(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:+.4f}"


def fmt_effect(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.2f}"


def grid_text(point: dict | None) -> str:
    if point is None:
        return "none finished"
    # a tuned float (learning_rate=0.004421645092853467) is shown to 4 significant digits; runs.csv keeps it whole
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(point.items())) \
        or "defaults"


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits, '-' and '_' replaced by '_': a plot file's name part."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display); imported on first use, as it is slow to load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, plot_dir: Path, name: str) -> str:
    """Lay out, write ``plot_dir/name`` at 110 dpi, free the figure; returns ``name``."""
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(plot_dir / name, dpi=110)
    plt.close(fig)
    return name
