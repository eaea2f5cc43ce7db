"""Train a Hugging Face model on dict batches, then on a stream with no length.

    pip install -e ".[hf]"
    python examples/huggingface.py

The model is a tiny BERT built from a config (nothing is downloaded). Batches are dicts
(`input_ids`, `attention_mask`, `labels`): hookloop calls `model(**batch)` and, with no
loss_func, trains on the loss the model computes itself; metrics see `output.logits`. The
second fit reads an IterableDataset with no length, bounded by `steps_per_epoch` (Keras), so
the one-cycle schedule knows its total.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset
from transformers import BertConfig, BertForSequenceClassification

from hookloop import Learner, accuracy


def token_task(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """8 tokens of 100; the label says whether the first token is below 50."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, 8), generator=g)
    labels = (ids[:, 0] < 50).long()
    mask = torch.ones(8, dtype=torch.long)
    return [{"input_ids": ids[i], "attention_mask": mask, "labels": labels[i]} for i in range(n)]


class TokenStream(IterableDataset):
    """An endless stream of examples of the same task (what `datasets` streaming gives)."""

    def __iter__(self):
        seed = 100
        while True:
            yield from token_task(64, seed)
            seed += 1


def tiny_bert() -> BertForSequenceClassification:
    """A BERT classifier small enough to train on a CPU in seconds, built from its config."""
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=16,
    )
    return BertForSequenceClassification(config)


def main() -> None:
    torch.manual_seed(0)
    model = tiny_bert()
    valid = DataLoader(token_task(128, 1), batch_size=64)

    train = DataLoader(token_task(512, 0), batch_size=32, shuffle=True)
    learn = Learner(model, (train, valid), metrics=accuracy, lr=1e-3)
    learn.fit(3)

    stream = DataLoader(TokenStream(), batch_size=32)
    learn = Learner(model, (stream, valid), metrics=accuracy)
    learn.fit_one_cycle(2, lr_max=1e-3, steps_per_epoch=20)
    preds, targets = learn.get_preds()  # the logits
    learn.logger(f"validation accuracy {(preds.argmax(1) == targets).float().mean():.4f}")


if __name__ == "__main__":
    main()
