"""The `hookloop` command: `hookloop demo` trains a small MLP on scikit-learn's digits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def digits_dls(bs: int = 64, seed: int = 0) -> tuple:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), scaled, 20% held out."""
    import torch

    from .data import DataLoaders

    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "hookloop demo trains on scikit-learn's bundled digits: pip install 'hookloop[demo]'"
        ) from e

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    n_valid = len(x) // 5
    vi, ti = perm[:n_valid], perm[n_valid:]
    # Pixels are 0..16; some are constant in the training split, so scale rather than standardise.
    x = x / 16.0 - 0.5
    return DataLoaders.from_tensors(
        x[ti], y[ti], valid=(x[vi], y[vi]), bs=bs, shuffle=True, seed=seed
    )


def demo(epochs: int = 8, lr: float = 1e-2, out: str = "hookloop-demo", bar: bool = True) -> float:
    """Train the digits MLP; print the table and accuracy; save a loss plot. Returns accuracy."""
    import torch
    from torch import nn

    from .learner import Learner
    from .metrics import accuracy

    torch.manual_seed(0)
    dls = digits_dls()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), metrics=accuracy, path=out, device="cpu")
    fit = learn.fit_one_cycle if hasattr(learn, "fit_one_cycle") else learn.fit
    if bar:
        fit(epochs, lr)
    else:
        with learn.no_bar():
            fit(epochs, lr)
    acc = learn.validate()["accuracy"]
    plot = Path(out) / "loss.png"
    learn.recorder.plot_loss(fname=plot)
    print(f"final validation accuracy: {acc:.4f}")
    print(f"loss plot saved to {plot}")
    return acc


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hookloop` console script."""
    parser = argparse.ArgumentParser(prog="hookloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a small MLP on scikit-learn's digits data set")
    d.add_argument("--epochs", type=_positive_int, default=8, help="epochs to train (default 8)")
    d.add_argument("--lr", type=_positive_float, default=1e-2, help="max learning rate (1e-2)")
    d.add_argument("--out", default="hookloop-demo", help="folder for the loss plot")
    d.add_argument("--no-bar", action="store_true", help="print the epoch table without a bar")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(epochs=args.epochs, lr=args.lr, out=args.out, bar=not args.no_bar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
