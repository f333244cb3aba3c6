"""Outgoing webhooks (run decided, signal changed) delivered by a background thread with retries.

Each delivery is a JSON POST ``{"event", "sent_at", "data"}`` to the URL; 2xx = delivered, anything else or a
connection error is retried with exponential backoff (``retries`` times). A header ``X-Tiebreak-Event``
names the event; ``X-Tiebreak-Delivery`` is a unique id per event (receivers can de-duplicate retries).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any

import httpx

log = logging.getLogger(__name__)


class WebhookSender:
    def __init__(self, retries: int = 5, backoff_s: float = 0.5, timeout_s: float = 5.0, metrics: Any = None,
                 default_url: str | None = None):
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.default_url = default_url
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tiebreak-webhooks", daemon=True)
        self._thread.start()
        self.delivered: list[str] = []

    def send(self, event: str, data: dict, url: str | None = None) -> None:
        """Queue an event for ``url`` (or the default URL); no-op when neither is set."""
        target = url or self.default_url
        if target:
            self._q.put((target, {"event": event, "sent_at": time.time(), "data": data}, uuid.uuid4().hex))

    __call__ = send

    def _loop(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                try:
                    url, body, did = self._q.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._deliver(client, url, body, did)

    def _deliver(self, client: httpx.Client, url: str, body: dict, did: str) -> bool:
        headers = {"X-Tiebreak-Event": body["event"], "X-Tiebreak-Delivery": did}
        for attempt in range(self.retries + 1):
            try:
                r = client.post(url, json=body, headers=headers)
                if 200 <= r.status_code < 300:
                    self._count(body["event"], "delivered")
                    self.delivered.append(did)
                    return True
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}"
            self._count(body["event"], "retry")
            log.warning("webhook %s to %s failed (%s), attempt %d", body["event"], url, why, attempt + 1)
            if attempt < self.retries and not self._stop.wait(self.backoff_s * 2**attempt):
                continue
        self._count(body["event"], "failed")
        return False

    def _count(self, event: str, outcome: str) -> None:
        if self.metrics:
            self.metrics.webhooks.labels(event, outcome).inc()

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until the queue is empty (tests, shutdown)."""
        t0 = time.time()
        while not self._q.empty() and time.time() - t0 < timeout:
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
