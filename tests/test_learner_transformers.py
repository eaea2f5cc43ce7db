"""A real, tiny Hugging Face model (built from a config, no download) trains on dict batches."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from hookloop import Learner, accuracy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "huggingface.py"


def _example():
    # The test trains the example's own model and data, so the example stays runnable.
    spec = importlib.util.spec_from_file_location("huggingface_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tiny_bert_learns_a_token_task_from_dict_batches_with_its_own_loss():
    example = _example()
    torch.manual_seed(0)
    model = example.tiny_bert()
    train = DataLoader(example.token_task(512, 0), batch_size=32, shuffle=True)
    valid = DataLoader(example.token_task(128, 1), batch_size=64)
    learn = Learner(model, (train, valid), metrics=accuracy, lr=1e-3)  # no loss_func: BERT's
    with learn.no_bar(), learn.no_logging():
        history = learn.fit(3)
    losses, accs = history.history["val_loss"], history.history["val_accuracy"]
    assert losses[2] < losses[0] / 4  # 0.64 -> 0.04 on this machine
    assert accs[2] > accs[0] and accs[2] >= 0.95  # 0.89 -> 1.0
    preds, targets = learn.get_preds()  # the logits, not the ModelOutput
    assert preds.shape == (128, 2)
    assert (preds.argmax(1) == targets).float().mean().item() == accs[2]
