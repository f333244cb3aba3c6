"""OpenAI backend retry/backoff and error handling against a real local HTTP server (stdlib)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tiebreak.judges.backends import BackendError, OpenAIBackend


class _H(BaseHTTPRequestHandler):
    script: list = []
    bodies: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _H.bodies.append((self.path, body))
        status = _H.script.pop(0) if _H.script else 200
        if status == 200:
            lp = {"content": [{"token": "B", "logprob": -0.2,
                               "top_logprobs": [{"token": "B", "logprob": -0.2}, {"token": "A", "logprob": -1.8}]}]}
            payload = {"choices": [{"message": {"content": "B"}, "logprobs": lp}]}
        else:
            payload = {"error": {"message": f"status {status}"}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    _H.script, _H.bodies = [], []
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_retries_then_succeeds(server):
    _H.script = [503, 429]
    api = OpenAIBackend(server, "m", max_retries=3, backoff=0.01)
    s = api.choice_logprobs("q", ["A", "B"])
    assert s == {"A": -1.8, "B": -0.2}
    assert len(_H.bodies) == 3 and _H.bodies[0][0] == "/v1/chat/completions"
    body = _H.bodies[-1][1]
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["model"] == "m"


def test_non_retryable_error_is_immediate_and_clear(server):
    _H.script = [400]
    api = OpenAIBackend(server + "/v1", "m", max_retries=3, backoff=0.01)
    with pytest.raises(BackendError, match="HTTP 400"):
        api.generate(["q"])
    assert len(_H.bodies) == 1


def test_gives_up_after_retries(server):
    _H.script = [500] * 5
    api = OpenAIBackend(server, "m", max_retries=2, backoff=0.01)
    with pytest.raises(BackendError, match="failed after 3 attempts"):
        api.generate(["q"])


def test_concurrent_generate_keeps_order(server):
    api = OpenAIBackend(server, "m", concurrency=4)
    assert api.generate([f"p{i}" for i in range(8)]) == ["B"] * 8
    assert sorted(b["messages"][0]["content"] for _, b in _H.bodies) == sorted(f"p{i}" for i in range(8))
