"""Recorder plots (loss vs lr, schedules, metrics) as matplotlib Figures, and notebook display."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util import save_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .recorder import Recorder


def _finish(fig: Figure, fname: str | Path | None) -> Figure:
    fig.tight_layout()
    if fname is not None:
        save_png(fig, fname)
    return fig


@functools.cache
def figure_class() -> type:
    """matplotlib's Figure that a notebook draws when it is a cell's value (`_repr_png_`).

    Plots are built on `matplotlib.figure.Figure`, not pyplot (no global state, nothing pops up
    by itself), and a bare Figure shows in Jupyter only as `<Figure size ...>` text.
    """
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        def _repr_png_(self) -> bytes:
            return figure_png(self)

    return NotebookFigure


def _new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple | None = None) -> tuple:
    fig = figure_class()(figsize=figsize or (6 * ncols, 4 * nrows))
    axs = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    return fig, axs


def plot_lr_find(
    recorder: Recorder,
    skip_start: int = 0,
    skip_end: int = 5,
    suggestions: Sequence[tuple[float, float]] | None = None,
    nms: Sequence[str] | None = None,
    fname: str | Path | None = None,
) -> Figure:
    """Smoothed loss vs learning rate (log x), each suggestion marked as a point."""
    recorder.all_losses()  # reads pending losses so smooth_losses is complete
    lrs, losses = recorder.lrs, recorder.smooth_losses
    end = len(lrs) - skip_end if skip_end > 0 and len(lrs) > skip_end else len(lrs)
    fig, (ax,) = _new_figure()
    ax.plot(lrs[skip_start:end], losses[skip_start:end])
    ax.set_xscale("log")
    ax.set_xlabel("Learning Rate")
    ax.set_ylabel("Loss")
    if suggestions is None and recorder.lr_find_result is not None:
        suggestions, nms = recorder.lr_find_result.points, recorder.lr_find_result.names
    if suggestions:
        from matplotlib import rcParams

        colors = rcParams["axes.prop_cycle"].by_key()["color"][1:]
        for i, ((lr, loss), nm) in enumerate(zip(suggestions, nms or [""] * len(suggestions))):
            if math.isfinite(lr) and math.isfinite(loss):
                ax.plot(lr, loss, "o", label=nm, c=colors[i % len(colors)])
        ax.legend(loc="best")
    return _finish(fig, fname)


def plot_sched(
    recorder: Recorder,
    keys: str | Sequence[str] | None = None,
    figsize: tuple | None = None,
    fname: str | Path | None = None,
) -> Figure:
    """Each recorded hyper-parameter (default: all of `recorder.hps`) per training batch."""
    if keys is None:
        keys = list(recorder.hps)
    elif isinstance(keys, str):
        keys = [keys]
    keys = list(keys)
    if not keys:
        raise ValueError("plot_sched: keys is empty")
    for k in keys:
        if k not in recorder.hps:
            raise ValueError(
                f"plot_sched: no recorded hyper-parameter {k!r}; "
                f"recorded: {', '.join(recorder.hps)}"
            )
    ncols = min(2, len(keys))
    nrows = (len(keys) + 1) // 2
    fig, axs = _new_figure(nrows, ncols, figsize)
    for k, ax in zip(keys, axs):
        ax.plot(recorder.hps[k])
        ax.set_xlabel("training batch")
        ax.set_ylabel(k)
    for ax in axs[len(keys) :]:
        ax.set_visible(False)
    return _finish(fig, fname)


def plot_lr(
    recorder: Recorder,
    show_moms: bool = False,
    skip_start: int = 0,
    skip_end: int = 0,
    fname: str | Path | None = None,
) -> Figure:
    """fastai v1: the learning rate per batch, beside the momentum if `show_moms`."""
    end = len(recorder.lrs) - skip_end if skip_end > 0 else len(recorder.lrs)
    keys = ["lr"]
    if show_moms:
        if "mom" not in recorder.hps:
            raise ValueError("plot_lr(show_moms=True): the optimizer has no recorded momentum")
        keys.append("mom")
    fig, axs = _new_figure(1, len(keys))
    for k, ax in zip(keys, axs):
        values = recorder.hps[k][skip_start:end]
        ax.plot(range(skip_start, skip_start + len(values)), values)
        ax.set_xlabel("training batch")
        ax.set_ylabel("learning rate" if k == "lr" else "momentum")
    return _finish(fig, fname)


def plot_metrics(recorder: Recorder, fname: str | Path | None = None) -> Figure:
    """Per epoch: train and valid loss in one panel, then one panel per metric."""
    rows = recorder.rows
    if not rows:
        raise ValueError("plot_metrics: nothing recorded yet; call fit first")
    epochs = [r["epoch"] for r in rows]
    metric_names = [m.name for m in recorder.learn.metrics]
    panels = 1 + len(metric_names)
    ncols = min(2, panels)
    nrows = (panels + 1) // 2
    fig, axs = _new_figure(nrows, ncols)
    ax = axs[0]
    for key, label in (("train_loss", "train"), ("valid_loss", "valid")):
        if key in rows[0]:
            ax.plot(epochs, [r[key] for r in rows], marker="o", label=label)
    ax.set_title("losses")
    ax.legend(loc="best")
    for name, ax in zip(metric_names, axs[1:]):
        for key, label in ((f"train_{name}", "train"), (f"valid_{name}", "valid"), (name, "valid")):
            if key in rows[0]:
                ax.plot(epochs, [r[key] for r in rows], marker="o", label=label)
        ax.set_title(name)
        ax.legend(loc="best")
    from matplotlib.ticker import MaxNLocator

    for ax in axs:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axs[panels:]:
        ax.set_visible(False)
    return _finish(fig, fname)


def plot(
    recorder: Recorder,
    skip_start: int = 10,
    skip_end: int = 5,
    suggestion: bool = False,
    fname: str | Path | None = None,
) -> Figure:
    """fastai v1's `recorder.plot()`: loss vs lr after `lr_find`, otherwise the loss plot."""
    if recorder.lr_find_result is None:
        return recorder.plot_loss(fname=fname)
    if not suggestion:
        return plot_lr_find(recorder, skip_start, skip_end, fname=fname)
    # v1's suggestion: the steepest descent of the smoothed loss, kept as min_grad_lr.
    import numpy as np

    recorder.all_losses()
    end = len(recorder.lrs) - skip_end if skip_end > 0 else len(recorder.lrs)
    lrs, losses = recorder.lrs[skip_start:end], recorder.smooth_losses[skip_start:end]
    if len(losses) < 2:
        raise ValueError(
            f"plot(suggestion=True): only {len(losses)} points after skipping "
            f"{skip_start} at the start and {skip_end} at the end"
        )
    i = int(np.gradient(np.asarray(losses)).argmin())
    recorder.min_grad_lr = lrs[i]
    return plot_lr_find(recorder, skip_start, skip_end, [(lrs[i], losses[i])], ["min_grad"], fname)


def figure_png(fig: Figure) -> bytes:
    """The figure rendered as PNG bytes."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def show_in_notebook(fig: Figure, handle: Any = None) -> Any:
    """Display `fig` in the notebook, or redraw it in place through `handle`; returns the handle."""
    from IPython.display import Image, display

    image = Image(data=figure_png(fig), format="png")
    if handle is None:
        return display(image, display_id=True)
    handle.update(image)
    return handle


__all__ = [
    "plot_lr_find",
    "plot_sched",
    "plot_lr",
    "plot_metrics",
    "plot",
    "figure_png",
    "figure_class",
    "show_in_notebook",
]
