"""Writes the example notebooks (fastai v2, fastai v1, Keras, fastai book) without outputs.

Each notebook runs the snippets hookloop was asked to support, with only the import changed
and scikit-learn's digits (via `hookloop.cli.digits_dls`) in place of the vision data sets.
Cells end with `assert`s on what the snippet did, so running a notebook is a check.

    python examples/make_notebooks.py        # rewrites examples/*.ipynb
"""

# The notebooks' cells keep the snippets' own line lengths.
# ruff: noqa: E501

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import torch
from torch import nn
from hookloop.cli import digits_dls   # 8x8 digits, 1,437 training and 360 validation images

torch.manual_seed(0)

def make_model():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
"""


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    return new_code_cell(textwrap.dedent(text).strip())


FASTAI_V2 = [
    md("""
    # fastai v2 callbacks, run by hookloop

    The snippets of fastai v2's callbacks guide with one change: `from fastai.vision.all import *`
    becomes `from hookloop import *`, and a small MLP on scikit-learn's digits stands in for
    `cnn_learner(dls, resnet34)`.
    """),
    code("from hookloop import *\n\n" + SETUP + "\ndls = digits_dls()"),
    md("""
    ## A custom callback that prints the metrics

    `cbs=` takes one callback as well as a list, `metrics=` one metric as well as a list.
    The epoch's values are complete when `after_epoch` runs.
    """),
    code("""
    class PrintMetricsCallback(Callback):
        def after_epoch(self):
            print(f"Loss: {self.learn.loss:.4f}, Accuracy: {self.learn.recorder.metrics[0]:.4f}")

    model = make_model()
    learn = Learner(dls, model, metrics=accuracy, cbs=PrintMetricsCallback())
    learn.fit(2, 1e-2)
    assert len(learn.recorder.metrics) == 1 and learn.recorder.metrics[0] > 0.8
    """),
    md("""
    ## Predefined callbacks

    `EarlyStoppingCallback`, `SaveModelCallback`, `CSVLogger` and `MixUp` under their fastai
    names. Callbacks given to `fit` are used for that fit only; those given to `Learner` stay.
    """),
    code("""
    learn = Learner(dls, make_model(), metrics=accuracy, cbs=CSVLogger())
    learn.fit(3, 1e-2, cbs=[EarlyStoppingCallback(monitor='valid_loss', patience=1),
                            SaveModelCallback(monitor='accuracy', fname='best'),
                            MixUp()])
    df = learn.csv_logger.read_log()
    df
    """),
    code("""
    from pathlib import Path
    assert (Path('models') / 'best.pth').exists()
    assert list(df['epoch']) == list(range(len(learn.recorder.rows)))
    sorted(p.name for p in Path('models').iterdir())
    """),
    md("""
    ## A callback that writes the learner's state

    `before_fit`, `before_epoch`, `before_train`, `after_train`: read state as `self.<name>`,
    write it as `self.learn.<name>`.
    """),
    code("""
    class WarmupThenDecay(Callback):
        def before_fit(self):
            self.learn.n_epoch = 3              # whatever fit asked for
            self.learn.lrs_used = []

        def before_epoch(self):
            self.learn.lr_now = [1e-3, 1e-2, 1e-3][self.epoch]

        def before_train(self):
            for group in self.learn.opt.param_groups:
                group['lr'] = self.learn.lr_now

        def after_train(self):
            self.learn.lrs_used.append(self.opt.param_groups[0]['lr'])

    learn = Learner(dls, make_model(), metrics=accuracy, cbs=WarmupThenDecay())
    learn.fit(10)
    assert learn.lrs_used == [1e-3, 1e-2, 1e-3] and len(learn.recorder.rows) == 3
    learn.lrs_used
    """),
]

FASTAI_V1 = [
    md("""
    # fastai v1 callbacks, run by hookloop

    The fastai v1 callbacks wiki with `from hookloop import *`. fastai v1's `DataBunch` is
    hookloop's `DataLoaders`, still called `data` here.
    """),
    code("from hookloop import *\n\n" + SETUP + "\ndata = digits_dls()"),
    code("""
    model = make_model()
    learn = Learner(data, model, metrics=[accuracy])
    """),
    md("## Learning-rate finder"),
    code("""
    learn.lr_find(); learn.recorder.plot()
    """),
    md("## One cycle, and its learning-rate and momentum schedules"),
    code("""
    lr = 1e-2
    learn.fit_one_cycle(3, lr); learn.recorder.plot_lr(show_moms=True)
    """),
    code("""
    assert max(learn.recorder.lrs) <= lr and learn.recorder.rows[-1]['accuracy'] > 0.9
    """),
    md("## MixUp: `.mixup()` returns the learner"),
    code("""
    learn = Learner(data, make_model(), metrics=[accuracy]).mixup()
    learn.fit(1, 1e-2)
    assert isinstance(learn.mix_up, MixUp)
    """),
    md("## `callback_fns`: callables that take the learner"),
    code("""
    learn = Learner(data, make_model(), metrics=[accuracy, error_rate], callback_fns=[CSVLogger])
    learn.fit(3); learn.csv_logger.read_logged_file()
    """),
    md("## Saving every epoch: `bestmodel_1.pth`, `bestmodel_2.pth`, ..."),
    code("""
    learn = Learner(data, make_model(), metrics=accuracy)
    learn.fit_one_cycle(3, 1e-4, callbacks=[SaveModelCallback(learn, every='epoch', monitor='accuracy')])
    saved = sorted(p.name for p in (learn.path / learn.model_dir).iterdir())
    assert saved == ['bestmodel_1.pth', 'bestmodel_2.pth', 'bestmodel_3.pth']
    saved
    """),
]

KERAS = [
    md("""
    # Keras callbacks, run by hookloop

    Keras' built-in callbacks and the hooks of a custom `Callback`, with
    `import hookloop as hl` in place of `from tensorflow import keras`: `keras.callbacks.X` is
    `hl.X`, `model.fit(..., epochs=n, callbacks=[...])` is `learn.fit(n, callbacks=[...])`,
    `model.evaluate` is `learn.validate`, `model.predict` is `learn.get_preds`.
    """),
    new_code_cell(
        "import hookloop as hl\n\n"
        + SETUP
        + textwrap.dedent("""
        def make_learner(**kwargs):
            return hl.Learner(make_model(), digits_dls(), nn.CrossEntropyLoss(),
                              metrics=hl.accuracy, lr=1e-2, **kwargs)
        """)
    ),
    md("## `History`: what `fit` returns"),
    code("""
    learn = make_learner(train_metrics=True)
    my_history = learn.fit(2)
    print(my_history.params)
    my_history.history
    """),
    code("""
    assert set(my_history.history) == {'loss', 'accuracy', 'val_loss', 'val_accuracy'}
    assert my_history.params == {'epochs': 2, 'steps': 23, 'verbose': 1}
    """),
    md("## `BaseLogger`, `CSVLogger`, `ProgbarLogger`, `TerminateOnNaN`, `History` as callbacks"),
    code("""
    history = hl.History()
    base_logger = hl.BaseLogger(stateful_metrics=None)
    csv_logger = hl.CSVLogger('training.log')
    learn = make_learner()
    learn.fit(2, callbacks=[history, base_logger, csv_logger, hl.ProgbarLogger(), hl.TerminateOnNaN()])
    print(open('training.log').read())
    assert history.history['loss'] == learn.recorder.history.history['loss']
    assert abs(base_logger.logs['loss'] - history.history['loss'][-1]) < 1e-6
    """),
    md(
        "## A custom `Callback`: every hook, with its `logs` (batch hooks print the first two batches)"
    ),
    code("""
    class CustomCallback(hl.Callback):
        def on_train_begin(self, logs=None):
            print("Starting training; got log keys: {}".format(list(logs.keys())))

        def on_train_end(self, logs=None):
            print("Stop training; got log keys: {}".format(list(logs.keys())))

        def on_epoch_begin(self, epoch, logs=None):
            print("Start epoch {} of training; got log keys: {}".format(epoch, list(logs.keys())))

        def on_epoch_end(self, epoch, logs=None):
            print("End epoch {} of training; got log keys: {}".format(epoch, list(logs.keys())))

        def on_test_begin(self, logs=None):
            print("Start testing; got log keys: {}".format(list(logs.keys())))

        def on_test_end(self, logs=None):
            print("Stop testing; got log keys: {}".format(list(logs.keys())))

        def on_predict_begin(self, logs=None):
            print("Start predicting; got log keys: {}".format(list(logs.keys())))

        def on_predict_end(self, logs=None):
            print("Stop predicting; got log keys: {}".format(list(logs.keys())))

        def on_train_batch_begin(self, batch, logs=None):
            if batch < 2:
                keys = list(logs.keys())
                print("...Training: start of batch {}; got log keys: {}".format(batch, keys))

        def on_train_batch_end(self, batch, logs=None):
            if batch < 2:
                keys = list(logs.keys())
                print("...Training: end of batch {}; got log keys: {}".format(batch, keys))

        def on_test_batch_begin(self, batch, logs=None):
            if batch < 2:
                keys = list(logs.keys())
                print("...Evaluating: start of batch {}; got log keys: {}".format(batch, keys))

        def on_test_batch_end(self, batch, logs=None):
            if batch < 2:
                keys = list(logs.keys())
                print("...Evaluating: end of batch {}; got log keys: {}".format(batch, keys))

        def on_predict_batch_begin(self, batch, logs=None):
            if batch < 2:
                keys = list(logs.keys())
                print("...Predicting: start of batch {}; got log keys: {}".format(batch, keys))

        def on_predict_batch_end(self, batch, logs=None):
            if batch < 2:
                keys = list(logs.keys())
                print("...Predicting: end of batch {}; got log keys: {}".format(batch, keys))

    learn = make_learner()
    with learn.no_logging():
        learn.fit(1, callbacks=[CustomCallback()])
    res = learn.validate(callbacks=[CustomCallback()])
    preds, targets = learn.get_preds(callbacks=[CustomCallback()])
    """),
    md("Keras 2's `on_batch_begin` / `on_batch_end` are the training-batch hooks."),
    code("""
    class LossPerBatch(hl.Callback):
        def on_batch_begin(self, batch, logs=None):
            self.batches = getattr(self, 'batches', 0) + 1

        def on_batch_end(self, batch, logs=None):
            self.last = (batch, logs['loss'])

    cb = LossPerBatch()
    make_learner().fit(1, callbacks=[cb])
    assert cb.batches == 23 and cb.last[0] == 22
    cb.last
    """),
    md("## `EarlyStopping`, `ReduceLROnPlateau`, `LearningRateScheduler`"),
    code("""
    callback = hl.EarlyStopping(monitor='val_loss', patience=1, min_delta=10, restore_best_weights=True)
    learn = make_learner()
    history = learn.fit(10, callbacks=[callback])
    assert len(history.history['loss']) == 2     # no epoch improves val_loss by 10
    """),
    code("""
    import math

    def scheduler(epoch, lr):
        if epoch < 1:
            return lr
        else:
            return lr * math.exp(-0.1)

    reduce_lr = hl.ReduceLROnPlateau(monitor='val_loss', factor=0.2, patience=5, min_lr=0.001)
    learn = make_learner()
    learn.fit(3, callbacks=[hl.LearningRateScheduler(scheduler), reduce_lr])
    round(learn.opt.param_groups[0]['lr'], 5)
    """),
    md("## `ModelCheckpoint`: one file per epoch, named from the epoch and the loss"),
    code("""
    from pathlib import Path
    learn = make_learner()
    history = learn.fit(3, callbacks=[hl.ModelCheckpoint('weights.{epoch:02d}-{val_loss:.2f}.h5')])
    files = sorted(p.name for p in Path('.').glob('weights.*'))
    assert files == [f'weights.{e + 1:02d}-{v:.2f}.h5' for e, v in enumerate(history.history['val_loss'])]
    learn.load(files[-1])
    files
    """),
    md("## `LambdaCallback`, `RemoteMonitor` (to a local HTTP server), `TensorBoard`"),
    code("""
    import http.server, json, threading, urllib.parse

    received = []
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers['Content-Length'])).decode())
            self.send_response(200)
            self.end_headers()
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    json_log = open('loss_log.json', mode='wt', buffering=1)
    json_logging_callback = hl.LambdaCallback(
        on_epoch_end=lambda epoch, logs: json_log.write(
            json.dumps({'epoch': epoch, 'loss': logs['loss']}) + '\\n'),
        on_train_end=lambda logs: json_log.close()
    )
    remote = hl.RemoteMonitor(root=f'http://127.0.0.1:{server.server_address[1]}')
    tensorboard_callback = hl.TensorBoard(log_dir='./logs')

    learn = make_learner()
    learn.fit(2, callbacks=[json_logging_callback, remote, tensorboard_callback])
    server.shutdown()
    posted = [json.loads(urllib.parse.parse_qs(body)['data'][0]) for body in received]
    assert [p['epoch'] for p in posted] == [0, 1] and json_log.closed
    print(open('loss_log.json').read())
    posted
    """),
    code("""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator('logs'); acc.Reload()
    [(e.step, round(e.value, 4)) for e in acc.Scalars('epoch/valid_loss')]
    """),
]

BOOK = [
    md("""
    # The fastai book's callbacks chapter, run by hookloop

    The book spells the events `begin_fit`, `begin_epoch`, `begin_train`, `begin_batch`,
    `begin_validate`; hookloop runs them as the `before_*` events (with a DeprecationWarning).
    A callback changes what the loop does by writing `self.learn.xb`, `self.learn.yb`,
    `self.learn.loss`, or the gradients.
    """),
    code("from hookloop import *\n\n" + SETUP + "\ndls = digits_dls()"),
    md("""
    ## `ModelResetter` and `RNNRegularizer`

    A small RNN reads each 8x8 digit as 8 rows of 8 pixels; like the book's AWD-LSTM it has
    `reset()` and returns `(output, raw_outputs, outputs)`.
    """),
    code("""
    class TinyRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(8, 32, batch_first=True)
            self.head = nn.Linear(32, 10)
            self.resets = 0

        def reset(self):
            self.resets += 1

        def forward(self, x):
            raw, _ = self.rnn(x.view(-1, 8, 8))
            return self.head(raw[:, -1]), [raw], [raw]

    class ModelResetter(Callback):
        def begin_train(self):    self.model.reset()
        def begin_validate(self): self.model.reset()

    class RNNRegularizer(Callback):
        def __init__(self, alpha=0., beta=0.): self.alpha,self.beta = alpha,beta

        def after_pred(self):
            self.raw_out,self.out = self.pred[1],self.pred[2]
            self.learn.pred = self.pred[0]

        def after_loss(self):
            if not self.training: return
            if self.alpha != 0.:
                self.learn.loss += self.alpha * self.out[-1].float().pow(2).mean()
            if self.beta != 0.:
                h = self.raw_out[-1]
                if len(h)>1:
                    self.learn.loss += self.beta * (h[:,1:] - h[:,:-1]
                                                   ).float().pow(2).mean()

    model = TinyRNN()
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), metrics=accuracy,
                    cbs=[ModelResetter(), RNNRegularizer(alpha=2., beta=1.)])
    learn.fit(2, 1e-2)
    assert model.resets == 4
    """),
    md("""
    ## `CancelBatchException` and `after_cancel_batch`

    A callback that skips the update for every other batch: `after_cancel_batch`, then
    `after_batch`, run; backward and the step do not.
    """),
    code("""
    class SkipOddBatches(Callback):
        def begin_fit(self):
            self.cancelled, self.steps = 0, 0

        def after_loss(self):
            if self.training and self.iter % 2 == 1:
                raise CancelBatchException

        def after_step(self):
            self.steps += 1

        def after_cancel_batch(self):
            self.cancelled += 1

    skip = SkipOddBatches()
    learn = Learner(dls, make_model(), metrics=accuracy, cbs=skip)
    learn.fit(1, 1e-2)
    assert (skip.cancelled, skip.steps) == (11, 12)   # 23 training batches
    (skip.cancelled, skip.steps)
    """),
    md("""
    ## Changing `xb`, `yb`, the loss and the gradients

    `begin_batch` adds noise to the inputs; `after_backward` clips the gradients; a
    `TerminateOnNaNCallback` as the book writes it (`run_before=Recorder`) stops at a NaN loss.
    """),
    code("""
    class NoisyInputs(Callback):
        def begin_batch(self):
            if self.training:
                self.learn.xb = (self.xb[0] + 0.1 * torch.randn_like(self.xb[0]),)

    class ClipGrads(Callback):
        def after_backward(self):
            self.learn.max_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), 1.0))

    class TerminateOnNaNCallback(Callback):
        run_before=Recorder
        def after_batch(self):
            if torch.isinf(self.loss) or torch.isnan(self.loss):
                raise CancelFitException

    learn = Learner(dls, make_model(), metrics=accuracy,
                    cbs=[NoisyInputs(), ClipGrads(), TerminateOnNaNCallback()])
    learn.fit(2, 1e-2)
    assert learn.recorder.rows[-1]['accuracy'] > 0.8
    """),
]

NOTEBOOKS = {
    "fastai_v2.ipynb": FASTAI_V2,
    "fastai_v1.ipynb": FASTAI_V1,
    "keras.ipynb": KERAS,
    "fastai_book.ipynb": BOOK,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook `name` (a key of NOTEBOOKS), without outputs."""
    nb = new_notebook(cells=NOTEBOOKS[name])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    # Stable cell ids keep regenerated notebooks byte-identical (no diff in git).
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{Path(name).stem}-{i}"
    return nb


def main(out: Path = HERE) -> list[Path]:
    """Write every notebook into `out`; returns their paths."""
    paths = []
    for name in NOTEBOOKS:
        path = out / name
        nbformat.write(build(name), path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
