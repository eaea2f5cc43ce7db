"""ShowGraph: a loss plot after every epoch, as a PNG file or redrawn in place in IPython."""

from __future__ import annotations

import base64

import pytest

from conftest import tiny_learner
from hookloop import Callback, ShowGraph

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReadPng(Callback):
    """After ShowGraph's after_epoch, keeps the bytes of the PNG it wrote."""

    order = 70

    def __init__(self, path):
        self.path, self.snapshots = path, []

    def after_epoch(self):
        self.snapshots.append(self.path.read_bytes())


def test_show_graph_writes_loss_png_under_learn_path_after_every_epoch(tmp_path):
    reader = ReadPng(tmp_path / "loss.png")
    learn = tiny_learner(n_train=16, path=tmp_path)
    learn.fit(2, cbs=[ShowGraph(), reader])
    first, second = reader.snapshots
    assert first.startswith(PNG_MAGIC) and second.startswith(PNG_MAGIC)
    assert first != second  # redrawn with the second epoch's losses
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png"]  # no temp files left


def test_show_graph_fname_is_relative_to_learn_path_unless_absolute(tmp_path):
    learn = tiny_learner(path=tmp_path / "run")
    learn.fit(1, cbs=ShowGraph("plots/curve.png"))
    assert (tmp_path / "run" / "plots" / "curve.png").read_bytes().startswith(PNG_MAGIC)
    learn.fit(1, cbs=ShowGraph(tmp_path / "abs.png"))
    assert (tmp_path / "abs.png").exists()


def test_show_graph_x_axis_spans_the_whole_fit(tmp_path):
    graph = ShowGraph()
    tiny_learner(n_train=16, path=tmp_path).fit(2, cbs=graph)  # 2 epochs x 4 batches
    assert graph.fig.axes[0].get_xlim() == (0, 8)


def test_show_graph_is_idle_during_lr_find(tmp_path):
    learn = tiny_learner(n_train=64, bs=16, path=tmp_path, cbs=ShowGraph())
    learn.lr_find(num_it=20, show_plot=False)
    assert list(tmp_path.iterdir()) == []
    learn.fit(1)
    assert (tmp_path / "loss.png").exists()


def test_show_graph_in_ipython_redraws_one_display_in_place(tmp_path):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()
    try:
        with capture_output() as captured:
            tiny_learner(path=tmp_path).fit(3, cbs=ShowGraph(notebook=True))
    finally:
        InteractiveShell.clear_instance()
    outputs = captured.outputs
    # One display, then two updates of it (same display_id): the plot is redrawn in place.
    assert [o.update for o in outputs] == [False, True, True]
    assert len({o.transient["display_id"] for o in outputs}) == 1
    # IPython hands PNG data to the front end base64-encoded.
    assert all(base64.b64decode(o.data["image/png"]).startswith(PNG_MAGIC) for o in outputs)
    assert list(tmp_path.iterdir()) == []


def test_show_graph_works_as_fastai_v1_callback_fn(tmp_path):
    learn = tiny_learner(path=tmp_path, callback_fns=[ShowGraph])
    learn.fit(1)
    assert (tmp_path / "loss.png").exists()


def test_show_graph_rejects_a_bad_fname():
    with pytest.raises(TypeError, match="fname"):
        ShowGraph(fname=3)
