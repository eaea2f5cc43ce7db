"""Tests for hookloop.hyper: uniform hyper-parameter access across optimizers."""

import pytest
import torch
from torch import nn

from hookloop.hyper import even_mults, get_hyper, hyper_names, set_hyper


def three_groups():
    """Three hand-built param groups, as for discriminative learning rates."""
    torch.manual_seed(0)
    layers = [nn.Linear(2, 2) for _ in range(3)]
    return [{"params": layer.parameters()} for layer in layers]


def sgd(**kwargs):
    return torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1, **kwargs)


def adamw(**kwargs):
    return torch.optim.AdamW(nn.Linear(2, 1).parameters(), lr=1e-3, **kwargs)


def test_sgd_mom_reads_momentum():
    assert get_hyper(sgd(momentum=0.9), "mom") == [0.9]


def test_sgd_mom_writes_momentum():
    opt = sgd(momentum=0.9)
    set_hyper(opt, "mom", 0.8)
    assert opt.param_groups[0]["momentum"] == 0.8


def test_rmsprop_sqr_mom_is_alpha():
    opt = torch.optim.RMSprop(nn.Linear(2, 1).parameters(), alpha=0.95)
    set_hyper(opt, "sqr_mom", 0.9)
    assert opt.param_groups[0]["alpha"] == 0.9


def test_adamw_mom_reads_betas_0():
    assert get_hyper(adamw(betas=(0.85, 0.99)), "mom") == [0.85]


def test_adamw_writing_mom_keeps_betas_1():
    opt = adamw(betas=(0.9, 0.999))
    set_hyper(opt, "mom", 0.95)
    assert opt.param_groups[0]["betas"] == (0.95, 0.999)


def test_adamw_sqr_mom_is_betas_1():
    opt = adamw(betas=(0.9, 0.999))
    set_hyper(opt, "sqr_mom", 0.99)
    assert get_hyper(opt, "sqr_mom") == [0.99]
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)


def test_wd_is_weight_decay():
    opt = adamw(weight_decay=0.01)
    set_hyper(opt, "wd", 0.1)
    assert get_hyper(opt, "wd") == [0.1]
    assert opt.param_groups[0]["weight_decay"] == 0.1


def test_eps_is_eps():
    opt = adamw(eps=1e-8)
    set_hyper(opt, "eps", 1e-6)
    assert opt.param_groups[0]["eps"] == 1e-6


def test_number_sets_every_group():
    opt = torch.optim.SGD(three_groups(), lr=0.1)
    set_hyper(opt, "lr", 0.5)
    assert get_hyper(opt, "lr") == [0.5, 0.5, 0.5]


def test_list_sets_one_value_per_group():
    opt = torch.optim.SGD(three_groups(), lr=0.1)
    set_hyper(opt, "lr", [0.1, 0.2, 0.3])
    assert get_hyper(opt, "lr") == [0.1, 0.2, 0.3]


def test_wrong_length_list_names_both_lengths():
    opt = torch.optim.SGD(three_groups(), lr=0.1)
    with pytest.raises(ValueError, match="2 values for 3 param groups"):
        set_hyper(opt, "lr", [0.1, 0.2])


def test_slice_start_stop_spreads_geometrically():
    opt = torch.optim.SGD(three_groups(), lr=0.1)
    set_hyper(opt, "lr", slice(1e-3, 1e-2))
    # Middle group is the geometric mean: sqrt(1e-3 * 1e-2) = 3.162e-3
    assert get_hyper(opt, "lr") == pytest.approx([1e-3, 3.16228e-3, 1e-2], rel=1e-5)


def test_slice_stop_gives_earlier_groups_a_tenth():
    opt = torch.optim.SGD(three_groups(), lr=0.1)
    set_hyper(opt, "lr", slice(1e-2))
    assert get_hyper(opt, "lr") == pytest.approx([1e-3, 1e-3, 1e-2], rel=1e-9)


def test_slice_with_one_group_gives_stop():
    opt = sgd()
    set_hyper(opt, "lr", slice(1e-3, 1e-2))
    assert get_hyper(opt, "lr") == [1e-2]


def test_tensor_lr_stays_the_same_tensor():
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=torch.tensor(0.1))
    lr = opt.param_groups[0]["lr"]
    set_hyper(opt, "lr", 0.05)
    assert opt.param_groups[0]["lr"] is lr
    assert get_hyper(opt, "lr") == pytest.approx([0.05])


def test_hyper_names_of_sgd():
    assert hyper_names(sgd(momentum=0.9)) == ["lr", "mom", "wd"]


def test_hyper_names_of_adamw():
    assert hyper_names(adamw()) == ["lr", "mom", "sqr_mom", "wd", "eps"]


def test_asgd_alpha_is_not_sqr_mom():
    opt = torch.optim.ASGD(nn.Linear(2, 1).parameters())
    assert "sqr_mom" not in hyper_names(opt)


def test_missing_name_error_names_class_and_available_names():
    with pytest.raises(ValueError) as err:
        get_hyper(sgd(momentum=0.9), "sqr_mom")
    assert str(err.value) == "SGD has no hyper-parameter 'sqr_mom'; it has: lr, mom, wd"


def test_unknown_name_error_names_class_and_available_names():
    with pytest.raises(ValueError, match=r"AdamW has no hyper-parameter 'beta'.*lr, mom"):
        set_hyper(adamw(), "beta", 0.9)


def test_even_mults_spreads_geometrically():
    assert even_mults(1, 100, 3) == pytest.approx([1, 10, 100])


def test_even_mults_with_one_value_is_stop():
    assert even_mults(1, 100, 1) == [100]
