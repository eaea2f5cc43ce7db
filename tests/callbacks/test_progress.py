"""ProgressBar: table lines without a terminal, a tqdm bar with one, lazy loss reads."""

from __future__ import annotations

from conftest import tiny_learner
from hookloop import ProgbarLogger, ProgressBar


def test_without_a_terminal_only_table_lines_are_printed(capsys):
    learn = tiny_learner()
    learn.logger = print
    learn.fit(2)
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["epoch", "0", "1"]
    assert "it/s" not in err and "it/s" not in out


def test_with_show_bar_a_tqdm_bar_is_drawn_per_phase(capsys):
    learn = tiny_learner(n_train=8, bs=4)
    learn.logger = print
    learn.remove_cb(learn.progress_bar)
    learn.add_cb(ProgressBar(show_bar=True, mininterval=0))  # redraw after every batch
    learn.fit(1)
    err = capsys.readouterr().err
    assert "epoch 0 train" in err and "epoch 0 valid" in err
    assert f"loss={learn.recorder.smooth_losses[0]:.4f}" in err


class CountingBar(ProgressBar):
    reads = 0

    def _loss_postfix(self):
        CountingBar.reads += 1
        return super()._loss_postfix()


def test_the_smoothed_loss_is_read_only_when_the_bar_redraws():
    # 100 batches with a redraw interval far beyond the run: tqdm draws the training bar once,
    # when it opens (closing a bar with leave=False clears it without a redraw), so the loss
    # is read once, not 100 times.
    learn = tiny_learner(n_train=400, bs=4)
    learn.remove_cb(learn.progress_bar)
    learn.add_cb(CountingBar(show_bar=True, mininterval=1e6))
    learn.fit(1)
    assert CountingBar.reads == 1
    assert len(learn.recorder.losses) == 100


def test_progbar_logger_is_the_keras_name_of_progress_bar():
    assert ProgbarLogger is ProgressBar


def test_logger_is_restored_after_fit():
    learn = tiny_learner()
    before = learn.logger
    learn.fit(1)
    assert learn.logger is before


def test_a_custom_logger_receives_the_table_lines_also_under_a_drawn_bar(capsys):
    lines = []
    learn = tiny_learner()
    learn.logger = lines.append
    learn.remove_cb(learn.progress_bar)
    learn.add_cb(ProgressBar(show_bar=True))
    learn.fit(2)
    assert [line.split()[0] for line in lines] == ["epoch", "0", "1"]
    assert "epoch 0 train" in capsys.readouterr().err


def test_the_bar_ends_at_the_number_of_batches_however_often_it_redrew(capsys):
    # 100 training batches; with mininterval 0 tqdm adapts how many updates it skips, and the
    # bar is still handed every batch by the time it closes.
    learn = tiny_learner(n_train=400, bs=4)
    learn.remove_cb(learn.progress_bar)
    learn.add_cb(ProgressBar(show_bar=True, leave=True, mininterval=0))
    learn.fit(1)
    assert "100/100" in capsys.readouterr().err


def test_the_bar_shows_no_loss_before_the_first_batch():
    learn = tiny_learner()
    bar = learn.progress_bar
    assert bar._loss_postfix() == ""
    learn.fit(1)
    assert bar._loss_postfix() == f"loss={learn.recorder.smooth_losses[-1]:.4f}"


def test_a_validate_inside_the_training_phase_keeps_the_training_bar(capsys):
    from hookloop import Callback

    class ValidateAtFirstBatch(Callback):
        run_valid = False

        def after_batch(self):
            if self.learn.iter == 0:
                self.learn.validate()

    learn = tiny_learner(cbs=ValidateAtFirstBatch(), n_train=12, bs=4)
    learn.remove_cb(learn.progress_bar)
    learn.add_cb(ProgressBar(show_bar=True, leave=True, mininterval=0))
    learn.fit(1)
    err = capsys.readouterr().err
    # One training bar that reaches 3/3, and only the epoch's own validation bar.
    assert err.count("epoch 0 train") >= 1 and "3/3" in err
    assert "train: 100%" in err
    assert learn.progress_bar._aside is None
