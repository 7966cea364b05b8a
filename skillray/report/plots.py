"""Report plots as PNG bytes, drawn with matplotlib's Agg canvas.

``Figure`` + ``FigureCanvasAgg`` (matplotlib's object API) instead of ``pyplot``: no global
backend switch, no figure registry to leak, safe in worker processes and servers.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def explained_variance_png(ratio: Sequence[float]) -> bytes:
    """Bars of each direction's explained-variance ratio and the cumulative line.

    Parameters
    ----------
    ratio : sequence of float, shape (k,)
    """
    r = np.asarray(ratio, dtype=np.float64)
    fig = _figure(6, 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(r))
    ax.bar(x, r, color="#4C72B0", label="per direction")
    ax.plot(x, np.cumsum(r), color="#DD8452", marker="o", label="cumulative")
    ax.set_xticks(x, [f"d{i}" for i in x])
    ax.set_ylabel("explained variance ratio")
    ax.set_ylim(0, max(1e-9, float(np.cumsum(r)[-1]) * 1.08) if len(r) else 1)
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def projection_histogram_png(
    z: np.ndarray, top: np.ndarray, bottom: np.ndarray, held: np.ndarray | None = None, title: str = ""
) -> bytes:
    """Histogram of one direction's projections with the labelled poles (and held-out rows) marked.

    Parameters
    ----------
    z : ndarray of shape (N,)
    top, bottom : int arrays of row indices shown to the labeller
    held : int array of held-out row indices, optional
    """
    z = np.asarray(z, dtype=np.float64)
    fig = _figure(6, 2.6)
    ax = fig.add_subplot()
    bins = min(50, max(10, len(z) // 5))
    ax.hist(z, bins=bins, color="#b0b7c3")
    y = ax.get_ylim()[1]
    ax.scatter(z[top], np.full(len(top), y * 0.04), marker="|", s=200, color="#C44E52", label="pole A (labelled)")
    ax.scatter(z[bottom], np.full(len(bottom), y * 0.04), marker="|", s=200, color="#4C72B0", label="pole B (labelled)")
    if held is not None and len(held):
        ax.scatter(z[held], np.full(len(held), y * 0.1), marker="v", s=25, color="#555", label="held out")
    ax.set_xlabel("projection")
    ax.set_ylabel("examples")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def scatter_png(x: np.ndarray, y: np.ndarray, groups: Sequence[str | None], xlabel: str, ylabel: str) -> bytes:
    """2-D scatter coloured by group (human skill label; None = "unlabelled").

    Parameters
    ----------
    x, y : ndarray of shape (N,)
    groups : sequence of length N
    """
    g = np.asarray(["unlabelled" if s is None else str(s) for s in groups])
    names = sorted(set(g))
    fig = _figure(7, 5)
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    for i, name in enumerate(names):
        m = g == name
        ax.scatter(np.asarray(x)[m], np.asarray(y)[m], s=14, alpha=0.8, color=cmap(i % cmap.N), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(names) <= 20:
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)
