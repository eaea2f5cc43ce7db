"""A real, tiny Hugging Face model (built from a config, no download) trains on dict batches."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

from hookloop import Learner, accuracy


def _token_task(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    # 8 tokens from a vocabulary of 100; the label says whether the first token is below 50.
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, 8), generator=g)
    labels = (ids[:, 0] < 50).long()
    mask = torch.ones(8, dtype=torch.long)
    return [{"input_ids": ids[i], "attention_mask": mask, "labels": labels[i]} for i in range(n)]


def test_a_tiny_bert_learns_a_token_task_from_dict_batches_with_its_own_loss():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=16,
    )
    model = BertForSequenceClassification(config)
    train = DataLoader(_token_task(512, 0), batch_size=32, shuffle=True)
    valid = DataLoader(_token_task(128, 1), batch_size=64)
    learn = Learner(model, (train, valid), metrics=accuracy, lr=1e-3)  # no loss_func: BERT's
    with learn.no_bar(), learn.no_logging():
        history = learn.fit(3)
    losses, accs = history.history["val_loss"], history.history["val_accuracy"]
    assert losses[2] < losses[0] / 4  # 0.64 -> 0.04 on this machine
    assert accs[2] > accs[0] and accs[2] >= 0.95  # 0.89 -> 1.0
    preds, targets = learn.get_preds()  # the logits, not the ModelOutput
    assert preds.shape == (128, 2)
    assert (preds.argmax(1) == targets).float().mean().item() == accs[2]
