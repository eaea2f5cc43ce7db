"""RemoteMonitor: POSTs to a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import urllib.parse
import warnings

import pytest
from logging_helpers import two_epochs

from hookloop import RemoteMonitor


def test_remote_monitor_posts_each_epoch_as_a_form_field_holding_json(http_server):
    two_epochs().fit(2, cbs=RemoteMonitor(root=http_server.root))
    assert [path for path, _, _ in http_server.received] == ["/publish/epoch/end/"] * 2
    forms = [urllib.parse.parse_qs(body) for _, _, body in http_server.received]
    assert [json.loads(form["data"][0]) for form in forms] == [
        {"epoch": 0, "loss": 2.0, "val_loss": 5.0},
        {"epoch": 1, "loss": 3.0, "val_loss": 7.0},
    ]
    assert http_server.received[0][1]["Content-Type"] == "application/x-www-form-urlencoded"


def test_remote_monitor_send_as_json_posts_the_json_body_with_extra_headers(http_server):
    monitor = RemoteMonitor(
        root=http_server.root, path="/logs", headers={"X-Token": "abc"}, send_as_json=True
    )
    two_epochs().fit(1, cbs=monitor)
    [(path, headers, body)] = http_server.received
    assert path == "/logs"
    assert headers["X-Token"] == "abc"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"epoch": 0, "loss": 2.0, "val_loss": 5.0}


def test_remote_monitor_warns_once_per_fit_when_the_server_fails(http_server):
    http_server.status["code"] = 500
    learn = two_epochs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = learn.fit(2, cbs=RemoteMonitor(root=http_server.root))
    failures = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(failures) == 1
    assert "could not POST" in str(failures[0].message)
    assert history.epoch == [0, 1]  # training went on
    assert len(http_server.received) == 2


def test_remote_monitor_unreachable_server_never_stops_training():
    with socket.socket() as s:  # a port nothing listens on once this socket closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    learn = two_epochs()
    with pytest.warns(RuntimeWarning, match=f"127.0.0.1:{port}"):
        history = learn.fit(2, cbs=RemoteMonitor(root=f"http://127.0.0.1:{port}"))
    assert history.epoch == [0, 1]


def test_remote_monitor_rejects_a_root_that_is_not_http():
    with pytest.raises(ValueError, match="root must be an http:// or https:// URL, got 'ftp://x'"):
        RemoteMonitor(root="ftp://x")
