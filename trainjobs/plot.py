"""Metric curves as a PNG (matplotlib, without a display): one panel per series."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_series(series: dict[str, list[dict[str, Any]]], path: Path, *, title: str = "", log_y: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(series) or ["(no metrics)"]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        points = series.get(name, [])
        ax.plot([p["step"] for p in points], [p["value"] for p in points], linewidth=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        if log_y and points and all(p["value"] > 0 for p in points):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
