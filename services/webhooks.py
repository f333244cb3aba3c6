"""Outgoing webhooks (run decided, signal changed), delivered at least once from an outbox in Redis.

Each delivery is a JSON POST ``{"event", "sent_at", "data"}`` to the URL; 2xx = delivered, anything else or a
connection error is retried with exponential backoff (``retries`` times, then the entry is kept in
``tb:outbox:dead`` for inspection). Headers: ``X-Tiebreak-Event`` names the event; ``X-Tiebreak-Delivery`` and
``Idempotency-Key`` carry the same id, fixed when the event is created and sent unchanged with every retry
and redelivery, so receivers de-duplicate on it.

At least once: a ``run.decided`` entry is written in the same Redis transaction as the decision
(``services.runs.status.DecidedEvents.check``), so an event exists exactly when its decision does. A delivery thread on
every replica claims due entries for ``claim_s`` seconds (a Lua script: no two replicas take the same entry
at once), posts, then deletes the entry. A process killed before, during or after a delivery leaves the entry
in Redis; it is due again once its claim runs out, and whichever replica runs next delivers it (again, with
the same id, if the kill came between the receiver's 2xx and the delete).

With no store (unit tests of code around it) events go through an in-memory queue instead (at most once).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

log = logging.getLogger(__name__)


SIGNAL_EVENT = "experiment.signal"


def signal_notifier(sender: WebhookSender) -> Callable[[str, dict], None]:
    """The experiments' notifier: ``(url, signal JSON)`` -> an ``experiment.signal`` event through ``sender``."""
    return lambda url, payload: sender.send(SIGNAL_EVENT, payload, url)


def outbox_entry(event: str, data: dict, url: str) -> tuple[str, str]:
    """(delivery id, JSON entry) for the outbox: the id is the receivers' idempotency key."""
    import json

    did = uuid.uuid4().hex
    return did, json.dumps({"event": event, "url": url, "attempts": 0,
                            "body": {"event": event, "sent_at": time.time(), "data": data}})


class WebhookSender:
    def __init__(self, retries: int = 5, backoff_s: float = 0.5, timeout_s: float = 5.0, metrics: Any = None,
                 default_url: str | None = None, store: Any = None, claim_s: float = 30.0, poll_s: float = 0.2):
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.default_url = default_url
        self.store = store
        self.claim_s = max(claim_s, timeout_s * 2)
        self.poll_s = poll_s
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._busy = 0
        self._thread = threading.Thread(target=self._loop, name="tiebreak-webhooks", daemon=True)
        self._thread.start()
        self.delivered: list[str] = []

    def send(self, event: str, data: dict, url: str | None = None) -> None:
        """Queue an event for ``url`` (or the default URL); no-op when neither is set."""
        target = url or self.default_url
        if not target:
            return
        if self.store is not None:
            import json

            did, entry = outbox_entry(event, data, target)
            self.store.outbox_add(did, json.loads(entry))
        else:
            self._q.put((target, {"event": event, "sent_at": time.time(), "data": data}, uuid.uuid4().hex, 0))

    def _loop(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                if self.store is not None:
                    if not self._outbox_round(client):
                        self._stop.wait(self.poll_s)
                    continue
                try:
                    url, body, did, _ = self._q.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._busy += 1
                try:
                    for attempt in range(self.retries + 1):
                        if self._post(client, url, body, did, attempt):
                            break
                        if attempt == self.retries or self._stop.wait(self.backoff_s * 2**attempt):
                            self._count(body["event"], "failed")
                            break
                finally:
                    self._busy -= 1

    def _outbox_round(self, client: httpx.Client) -> bool:
        """Deliver what is due now; False when nothing was (the caller sleeps)."""
        try:
            due = self.store.outbox_claim(time.time(), 16, self.claim_s)
        except Exception as e:  # noqa: BLE001 - Redis away: try again later
            log.warning("webhook outbox: %s", e)
            return False
        for did, entry in due:
            self._busy += 1
            try:
                n = int(entry.get("attempts", 0))
                if self._post(client, entry["url"], entry["body"], did, n):
                    self.store.outbox_done(did)
                elif n >= self.retries:
                    self._count(entry["body"]["event"], "failed")
                    self.store.r.hset("tb:outbox:dead", did, __import__("json").dumps(entry))
                    self.store.outbox_done(did)
                else:
                    entry["attempts"] = n + 1
                    self.store.outbox_retry(did, entry, time.time() + self.backoff_s * 2**n)
            except Exception as e:  # noqa: BLE001 - the entry stays claimed and is retried after claim_s
                log.warning("webhook outbox entry %s: %s", did, e)
            finally:
                self._busy -= 1
        return bool(due)

    def _post(self, client: httpx.Client, url: str, body: dict, did: str, attempt: int) -> bool:
        headers = {"X-Tiebreak-Event": body["event"], "X-Tiebreak-Delivery": did, "Idempotency-Key": did}
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
        return False

    def _count(self, event: str, outcome: str) -> None:
        if self.metrics:
            self.metrics.webhooks.labels(event, outcome).inc()

    def pending(self) -> int:
        if self.store is not None:
            return self.store.outbox_len() + self._busy
        return self._q.qsize() + self._busy

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until nothing is left to deliver (tests, shutdown)."""
        t0 = time.time()
        while self.pending() and time.time() - t0 < timeout:
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 2)
