"""Figures: matplotlib on the headless Agg backend, rendered to PNG bytes and written atomically (one
writer for every plot of the project, so no command leaves a half-written image behind)."""

from __future__ import annotations

from pathlib import Path

from reason_plugins.files import write_bytes_atomic


def pyplot():
    """matplotlib's pyplot on the headless Agg backend (never needs a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, tight: bool = True) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, **({"bbox_inches": "tight"} if tight else {}))
    pyplot().close(fig)
    return buf.getvalue()


def write_figure_atomic(fig, path: str | Path, tight: bool = True) -> Path:
    return write_bytes_atomic(path, figure_png(fig, tight))
