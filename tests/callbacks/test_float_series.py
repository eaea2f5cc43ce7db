"""FloatSeries: per-batch history stored as C doubles that reads like a Python list."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hookloop.callbacks.float_series import FloatSeries, SeriesDict


def test_a_float_series_reads_like_a_list():
    s = FloatSeries([1.0, 2.0, 3.0])
    assert len(s) == 3
    assert s[0] == 1.0 and s[-1] == 3.0
    assert s[1:] == [2.0, 3.0] and s[::2] == [1.0, 3.0]
    assert list(s) == [1.0, 2.0, 3.0] and list(reversed(s)) == [3.0, 2.0, 1.0]
    assert s == [1.0, 2.0, 3.0] and s == (1.0, 2.0, 3.0) and [1.0, 2.0, 3.0] == s
    assert s != [1.0, 2.0] and s != [1.0, 2.0, 4.0]
    assert 2.0 in s and s.index(3.0) == 2
    assert s + [4.0] == [1.0, 2.0, 3.0, 4.0] and [0.0] + s == [0.0, 1.0, 2.0, 3.0]
    assert repr(s) == "[1.0, 2.0, 3.0]"
    assert max(s) == 3.0 and sum(s) == 6.0
    assert s == pytest.approx([1.0, 2.0, 3.0]) and [1.0, 2.0, 3.0] == pytest.approx(s)
    with pytest.raises(IndexError):
        s[3]


def test_a_float_series_grows_in_place_at_8_bytes_a_value():
    s = FloatSeries()
    for i in range(1000):
        s.append(i / 2)
    s.extend([0.25, 0.75])
    assert len(s) == 1002 and s[-3:] == [499.5, 0.25, 0.75]
    assert s.nbytes == 8 * 1002


def test_numpy_gets_a_copy_so_the_series_can_still_grow():
    s = FloatSeries([0.5, 1.5])
    a = np.asarray(s)
    assert a.dtype == np.float64 and a.tolist() == [0.5, 1.5]
    s.append(2.5)  # a view of the buffer would make this raise BufferError
    assert len(a) == 2 and s == [0.5, 1.5, 2.5]


def test_a_float_series_is_built_from_a_tensor_and_pickles():
    s = FloatSeries(torch.tensor([0.1, 0.2], dtype=torch.float64))
    assert s == [0.1, 0.2]
    assert pickle.loads(pickle.dumps(s)) == [0.1, 0.2]


def test_a_list_stored_in_a_series_dict_becomes_a_float_series():
    hps = SeriesDict()
    hps["wd"] = []  # what ParamScheduler does for a hyper-parameter the Recorder lacks
    hps["wd"].append(0.01)
    assert isinstance(hps["wd"], FloatSeries) and hps["wd"] == [0.01]
