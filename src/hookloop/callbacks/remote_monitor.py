"""RemoteMonitor: POSTs each epoch's logs as JSON to an HTTP server (Keras)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import warnings

from .._check import check_number
from ..callback import Callback

_SECONDS = "a positive number of seconds"


class RemoteMonitor(Callback):
    """POSTs each epoch's logs (`epoch` and Keras keys) to an HTTP server, as Keras does.

    By default the body is a form with one field (`field`) holding the JSON; with
    `send_as_json=True` the body is the JSON itself. A failed POST warns once per fit and
    never stops training.

    Example:
        learn.fit(3, cbs=RemoteMonitor("http://localhost:9000"))
        # each epoch: POST /publish/epoch/end/  data={"epoch": 0, "loss": 0.69, "val_loss": ...}

    Args:
        root: the server's URL (`http://` or `https://`).
        path: the path appended to `root`.
        field: the form field holding the JSON (ignored with `send_as_json=True`).
        headers: extra HTTP headers, a dict of str.
        send_as_json: send the JSON as the body (`Content-Type: application/json`).
        timeout: seconds to wait for the server before giving up on that epoch's POST.
    """

    # After the Recorder (order 50), so an epoch cancelled before validation is complete here too.
    order = 51
    rank_zero_only = True

    def __init__(
        self,
        root: str = "http://localhost:9000",
        path: str = "/publish/epoch/end/",
        field: str = "data",
        headers: dict[str, str] | None = None,
        send_as_json: bool = False,
        timeout: float = 5.0,
    ) -> None:
        if not isinstance(root, str):
            raise TypeError(f"root must be a str URL, got {type(root).__name__}: {root!r}")
        if urllib.parse.urlsplit(root).scheme not in ("http", "https"):
            raise ValueError(f"root must be an http:// or https:// URL, got {root!r}")
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, got {path!r}")
        if not isinstance(field, str) or not field:
            raise ValueError(f"field must be a non-empty str, got {field!r}")
        if headers is not None and not isinstance(headers, dict):
            raise TypeError(f"headers must be a dict or None, got {headers!r}")
        check_number("timeout", timeout, positive=True, what=_SECONDS, finite=False)
        self.root = root
        self.path = path
        self.field = field
        self.headers = dict(headers or {})
        self.send_as_json = send_as_json
        self.timeout = timeout
        self._warned = False

    @property
    def url(self) -> str:
        """`root + path`, where each epoch's logs are posted."""
        return self.root + self.path

    def before_fit(self) -> None:
        self._warned = False

    def after_epoch(self) -> None:
        if not self.learn.recorder.epoch_recorded():
            return
        send = {"epoch": self.learn.epoch, **self.learn.recorder.keras_logs()}
        headers = dict(self.headers)
        if self.send_as_json:
            body = json.dumps(send).encode()
            headers.setdefault("Content-Type", "application/json")
        else:
            body = urllib.parse.urlencode({self.field: json.dumps(send)}).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts are OSErrors
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"RemoteMonitor could not POST to {self.url}: {e}; training goes on "
                    f"(further failures in this fit are not reported)",
                    RuntimeWarning,
                    stacklevel=2,
                )


__all__ = ["RemoteMonitor"]
