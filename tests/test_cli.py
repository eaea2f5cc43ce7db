"""The `hookloop demo` command: trains on scikit-learn's digits and saves a loss plot."""

from __future__ import annotations

import sys

import pytest

from hookloop.cli import main


def test_demo_reaches_95_percent_accuracy_and_saves_the_loss_plot(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--no-bar"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["epoch", "train_loss", "valid_loss"]
    acc = float(out[-2].removeprefix("final validation accuracy: "))
    assert acc >= 0.95
    assert out[-1] == f"loss plot saved to {tmp_path / 'loss.png'}"
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_rejects_a_non_positive_epoch_count(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])
    assert "--epochs: must be a positive integer, got 0" in capsys.readouterr().err


def test_demo_without_scikit_learn_names_the_demo_extra(monkeypatch):
    # A None entry makes `import sklearn.datasets` raise ImportError, as on a bare install.
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'hookloop\[demo\]'"):
        main(["demo", "--epochs", "1", "--no-bar"])
