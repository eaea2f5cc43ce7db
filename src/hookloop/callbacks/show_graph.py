"""ShowGraph: a loss plot redrawn after every epoch (in place in a notebook, else a PNG file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._util import in_notebook, save_png
from ..callback import Callback
from .plots import show_in_notebook


class ShowGraph(Callback):
    """Redraws the training and validation losses after every epoch.

    In a Jupyter notebook the figure is displayed once and updated in place; elsewhere it is
    written (atomically) to a PNG file after every epoch. The x axis spans the whole fit, so
    the curve grows from left to right. It stays idle during `lr_find`.

    Example:
        learn.fit(10, cbs=ShowGraph())   # writes ./loss.png after every epoch

    Args:
        fname: the PNG to write outside a notebook; a relative path is relative to
            `learn.path`. Default `learn.path / 'loss.png'`.
        notebook: None detects a Jupyter kernel; True always redraws through IPython's
            display (other IPython front ends); False always writes the PNG.
    """

    order = 65  # after the Recorder (50) and the progress bar (60)
    rank_zero_only = True

    def __init__(self, fname: str | Path | None = None, notebook: bool | None = None) -> None:
        if fname is not None and not isinstance(fname, (str, Path)):
            raise TypeError(f"ShowGraph: fname must be a str or Path, got {fname!r}")
        if notebook not in (None, True, False):
            raise TypeError(f"ShowGraph: notebook must be None, True or False, got {notebook!r}")
        self.fname, self.notebook = fname, notebook
        self.handle: Any = None
        self.fig: Any = None

    def before_fit(self) -> None:
        learn = self.learn
        self._run = not learn.trial_run
        self._notebook = in_notebook() if self.notebook is None else self.notebook
        self.handle = None
        self._total = learn.total_iters  # None: the x axis grows with the stream
        fname = Path(self.fname) if self.fname is not None else Path("loss.png")
        self.png_path = fname if fname.is_absolute() else learn.path / fname

    def after_epoch(self) -> None:
        if not self._run:
            return
        fig = self.learn.recorder.plot_loss(skip_start=0)
        ax = fig.axes[0]
        ax.set_xlim(0, self._total)
        for line in ax.get_lines():
            line.set_clip_on(False)  # the last epoch's valid marker sits on the right edge
        self.fig = fig
        if self._notebook:
            self.handle = show_in_notebook(fig, self.handle)
        else:
            save_png(fig, self.png_path)


# fastai v2's name.
ShowGraphCallback = ShowGraph

__all__ = ["ShowGraph", "ShowGraphCallback"]
