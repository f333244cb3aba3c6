"""Model backends behind one interface: xllamacpp GGUF (CPU, default), OpenAI-compatible HTTP, vLLM.

``Backend.generate`` turns user prompts (chat-formatted by the backend) into completions; it is what the
service uses to produce base/tuned outputs. ``Backend.choice_logprobs`` runs ONE forward pass
(max_tokens=1) and returns the log-probability of each choice token (``-inf`` when a choice is not among the
top tokens); when no choice appears in the top list the generated text is parsed as a fallback.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tiebreak.judges import env as env_vars

Messages = list[dict[str, str]]
PromptLike = str | Messages

TOP_LOGPROBS = 20
BACKENDS = ("gguf", "openai", "vllm")
PROMPT_FORMATS = ("chat", "completion")  # how a GGUF model is prompted to generate (MODEL spec "prompt_format")


class BackendError(RuntimeError):
    """A backend call failed (after retries); the message says which backend, what and why."""


@runtime_checkable
class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], *, max_tokens: int = 256, temperature: float = 0.0) -> list[str]: ...

    def choice_logprobs(self, prompt: PromptLike, choices: Sequence[str]) -> dict[str, float]: ...


def as_messages(prompt: PromptLike) -> Messages:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


def _norm_token(tok: str) -> str:
    return tok.strip().strip("\"'*.:()[]").lower()


def scores_from_top(top: list[tuple[str, float]], text: str, choices: Sequence[str]) -> dict[str, float]:
    """Map the top tokens of one position onto ``choices`` (case/space-insensitive, log-sum-exp over variants).

    Choices absent from the top list get ``-inf``. If none is present, the generated ``text`` is parsed:
    the choice it starts with gets logprob 0.
    """
    want = {_norm_token(c): c for c in choices}
    acc: dict[str, list[float]] = {c: [] for c in choices}
    for tok, lp in top:
        c = want.get(_norm_token(tok))
        if c is not None and _norm_token(tok) != "":
            acc[c].append(lp)
    out: dict[str, float] = {}
    for c, lps in acc.items():
        if lps:
            m = max(lps)
            out[c] = m + math.log(sum(math.exp(x - m) for x in lps))
        else:
            out[c] = -math.inf
    if all(v == -math.inf for v in out.values()):
        t = _norm_token(text.split()[0]) if text.strip() else ""
        for key, c in want.items():
            if t and (t == key or t.startswith(key)):
                out[c] = 0.0
                break
    return out


def _top_from_openai_choice(choice: dict) -> tuple[list[tuple[str, float]], str]:
    text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
    lp = choice.get("logprobs") or {}
    content = lp.get("content") or []
    top: list[tuple[str, float]] = []
    if content:
        first = content[0]
        top = [(t["token"], float(t["logprob"])) for t in first.get("top_logprobs") or []]
        if not top and "token" in first:
            top = [(first["token"], float(first["logprob"]))]
    elif lp.get("top_logprobs"):  # legacy completions format
        top = [(k, float(v)) for k, v in lp["top_logprobs"][0].items()]
    return top, text


# --------------------------------------------------------------------------- xllamacpp (GGUF, in-process)

_GGUF_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # fixed-size types
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_metadata_string(path: str | Path, key: str) -> str | None:
    """A string value of a GGUF file's metadata (None when absent or not a string).

    The GGUF header (ggml's documented format, versions 2 and 3): b"GGUF", uint32 version, uint64 tensor count,
    uint64 key/value count, then per entry a key (uint64 length + UTF-8), a uint32 value type and the value
    (strings: uint64 length + bytes; arrays: uint32 element type, uint64 count, the elements). Values before
    ``key`` are skipped by seeking (the tokenizer's vocabulary arrays come first: ~0.05 s for 262k tokens).
    """
    import struct

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic)")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 or later)")
        _, n_kv = struct.unpack("<QQ", f.read(16))

        def skip(kind: int) -> None:
            if kind == _GGUF_STRING:
                f.seek(struct.unpack("<Q", f.read(8))[0], 1)
            elif kind == _GGUF_ARRAY:
                elem, count = struct.unpack("<IQ", f.read(12))
                if elem in _GGUF_VALUE_SIZES:
                    f.seek(_GGUF_VALUE_SIZES[elem] * count, 1)
                else:
                    for _ in range(count):
                        skip(elem)
            elif kind in _GGUF_VALUE_SIZES:
                f.seek(_GGUF_VALUE_SIZES[kind], 1)
            else:
                raise ValueError(f"{path}: unknown GGUF value type {kind}")

        for _ in range(n_kv):
            name = f.read(struct.unpack("<Q", f.read(8))[0]).decode("utf-8", "replace")
            (kind,) = struct.unpack("<I", f.read(4))
            if name == key:
                if kind != _GGUF_STRING:
                    return None
                return f.read(struct.unpack("<Q", f.read(8))[0]).decode("utf-8", "replace")
            skip(kind)
    return None


def default_prompt_format(path: str | Path) -> str:
    """"chat" when the GGUF file carries a chat template (an instruction-tuned model), else "completion": a base
    model has none, and llama.cpp would otherwise wrap the prompt in a ChatML fallback it was never trained on
    (its answers then echo ``<|im_end|>``/``<|im_start|>``)."""
    return "chat" if gguf_metadata_string(path, "tokenizer.chat_template") else "completion"



class GGUFBackend:
    """A GGUF model in-process through xllamacpp (llama.cpp server core), with prompt caching.

    One model per process; calls are serialised (n_parallel=1 keeps the prompt cache hot for the two
    presentation orders, which share the question prefix).
    """

    def __init__(self, path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None, name: str | None = None,
                 verbose: bool = False):

        import xllamacpp as xlc

        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"GGUF file not found: {self.path}")
        self.name = name or self.path.stem
        p = xlc.CommonParams()
        p.model.path = str(self.path)
        p.n_ctx = n_ctx
        p.n_parallel = 1
        p.cache_prompt = True
        threads = n_threads or env_vars.threads() or (os.cpu_count() or 2)
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.warmup = False
        if not verbose:
            p.verbosity = -1
            try:
                p.log_json = False
            except AttributeError:
                pass
        self.n_ctx = n_ctx
        self.prompt_format = default_prompt_format(self.path)   # for generate(); judges always chat
        self._server = xlc.Server(p)
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible HTTP endpoint the embedded llama.cpp server listens on."""
        return str(self._server.listening_address).rstrip("/") + "/v1"

    def _call(self, req: dict, completion: bool = False) -> dict:
        with self._lock:
            r = self._server.handle_completions(req) if completion else self._server.handle_chat_completions(req)
        if isinstance(r, str):
            import json

            r = json.loads(r)
        if "error" in r:
            raise BackendError(f"gguf backend {self.name}: {r['error']}")
        return r

    def chat(self, prompt: PromptLike, *, max_tokens: int, temperature: float, top_logprobs: int = 0) -> dict:
        req: dict[str, Any] = {
            "messages": as_messages(prompt), "max_tokens": max_tokens, "temperature": temperature,
            "cache_prompt": True, "seed": 0,
        }
        if top_logprobs:
            req["logprobs"] = True
            req["top_logprobs"] = top_logprobs
        return self._call(req)

    def generate(self, prompts: list[str], *, max_tokens: int = 256, temperature: float = 0.0,
                 prompt_format: str | None = None) -> list[str]:
        """Completions of user prompts: through the model's chat template ("chat"), or the prompt text continued
        as it is ("completion", for base models); default: the file's (``default_prompt_format``)."""
        fmt = prompt_format or self.prompt_format
        if fmt not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)} (got {fmt!r})")
        out = []
        for pr in prompts:
            if fmt == "completion":
                r = self._call({"prompt": pr, "max_tokens": max_tokens, "temperature": temperature,
                                "cache_prompt": True, "seed": 0}, completion=True)
                out.append(r["choices"][0].get("text") or "")
            else:
                r = self.chat(pr, max_tokens=max_tokens, temperature=temperature)
                out.append(r["choices"][0]["message"].get("content") or "")
        return out

    def choice_logprobs(self, prompt: PromptLike, choices: Sequence[str]) -> dict[str, float]:
        r = self.chat(prompt, max_tokens=1, temperature=0.0, top_logprobs=TOP_LOGPROBS)
        top, text = _top_from_openai_choice(r["choices"][0])
        return scores_from_top(top, text, choices)

    def close(self) -> None:
        self._server = None


# --------------------------------------------------------------------------- OpenAI-compatible HTTP


DEFAULT_KEY_HOSTS = env_vars.DEFAULT_KEY_HOSTS


def key_hosts() -> dict[str, set[str]]:
    """Which environment variable holding an API key may be sent to which hosts:
    ``TIEBREAK_API_KEY_HOSTS="OPENAI_API_KEY=api.openai.com;MY_KEY=vllm.internal,judge.internal"`` (default:
    OPENAI_API_KEY to api.openai.com only). A key is never sent anywhere else, whatever a request says."""
    raw = env_vars.api_key_hosts_spec()
    out: dict[str, set[str]] = {}
    for part in raw.split(";"):
        name, _, hosts = part.partition("=")
        if name.strip():
            out[name.strip()] = {h.strip().lower() for h in hosts.split(",") if h.strip()}
    return out


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return (urlsplit(url).hostname or "").lower()


def api_key_problem(spec: dict) -> str | None:
    """Why an OpenAI spec's ``api_key_env`` may not be used with its ``base_url`` (None if it may)."""
    env = spec.get("api_key_env")
    if env is None:
        return None
    if not isinstance(env, str):
        return "api_key_env must be the name of an environment variable"
    hosts = key_hosts().get(env)
    host = _host(str(spec.get("base_url") or ""))
    if hosts is None:
        return (f"api_key_env {env!r} is not bound to any host; the server sends an environment key only to the "
                "hosts TIEBREAK_API_KEY_HOSTS binds it to (e.g. TIEBREAK_API_KEY_HOSTS='"
                f"{env}={host or 'host'}')")
    if host not in hosts:
        return (f"api_key_env {env!r} may only be sent to {sorted(hosts)} (TIEBREAK_API_KEY_HOSTS), not to "
                f"{host!r}")
    return None


def env_api_key(base_url: str, api_key_env: str | None) -> str | None:
    """The environment key to send to ``base_url``: ``api_key_env`` if it is bound to that host (else
    ValueError), or without one the first bound variable whose hosts include it (OPENAI_API_KEY for
    api.openai.com by default). No key for any other host: a request cannot make the server send its
    secrets to a URL of the request's choosing."""
    host = _host(base_url)
    bindings = key_hosts()
    if api_key_env is not None:
        why = api_key_problem({"api_key_env": api_key_env, "base_url": base_url})
        if why:
            raise ValueError(why)
        return env_vars.secret(api_key_env)
    for name, hosts in bindings.items():
        if host in hosts and env_vars.secret(name):
            return env_vars.secret(name)
    return None


class OpenAIBackend:
    """OpenAI-compatible chat completions over HTTP (vLLM serve, llama.cpp server, TGI, hosted APIs).

    Concurrency via a thread pool, per-request timeout, retries with exponential backoff + jitter on
    connection errors, timeouts, 408/409/429/5xx; other errors raise ``BackendError`` at once.
    """

    RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 0.5, concurrency: int = 4, name: str | None = None,
                 api_key_env: str | None = None):
        import httpx

        if not base_url:
            raise ValueError("openai backend needs 'base_url' (e.g. http://127.0.0.1:8000/v1)")
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model = model
        self.name = name or f"openai:{model}"
        self.max_retries = max_retries
        self.backoff = backoff
        self.concurrency = max(1, concurrency)
        key = api_key or env_api_key(self.base_url, api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers,
                                    limits=httpx.Limits(max_connections=self.concurrency * 2))

    def _post(self, body: dict) -> dict:
        import httpx

        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                r = self._client.post(url, json=body)
                if r.status_code == 200:
                    return r.json()
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code not in self.RETRY_STATUS:
                    raise BackendError(f"openai backend {self.name} at {url}: {last}")
            except (httpx.TransportError, httpx.TimeoutException) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < self.max_retries:
                time.sleep(self.backoff * (2**attempt) * (0.5 + random.random()))
        raise BackendError(f"openai backend {self.name} at {url}: failed after {self.max_retries + 1} attempts: {last}")

    def chat(self, prompt: PromptLike, *, max_tokens: int, temperature: float, top_logprobs: int = 0) -> dict:
        body: dict[str, Any] = {"model": self.model, "messages": as_messages(prompt), "max_tokens": max_tokens,
                                "temperature": temperature}
        if top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = top_logprobs
        return self._post(body)

    def _map(self, fn, items):
        if self.concurrency == 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.concurrency) as ex:
            return list(ex.map(fn, items))

    def generate(self, prompts: list[str], *, max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
        def one(p: str) -> str:
            r = self.chat(p, max_tokens=max_tokens, temperature=temperature)
            return r["choices"][0]["message"].get("content") or ""

        return self._map(one, prompts)

    def choice_logprobs(self, prompt: PromptLike, choices: Sequence[str]) -> dict[str, float]:
        r = self.chat(prompt, max_tokens=1, temperature=0.0, top_logprobs=TOP_LOGPROBS)
        top, text = _top_from_openai_choice(r["choices"][0])
        return scores_from_top(top, text, choices)

    def choice_logprobs_many(self, prompts: list[PromptLike], choices: Sequence[str]) -> list[dict[str, float]]:
        return self._map(lambda p: self.choice_logprobs(p, choices), prompts)

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- vLLM offline engine (GPU)


class VLLMBackend:
    """vLLM offline engine. With ``lora`` the tuned model is the base + a LoRA adapter served through a
    ``LoRARequest`` on the same engine (``use_lora=False`` in calls gives the base model)."""

    def __init__(self, model: str, *, lora: str | None = None, name: str | None = None, **engine_kwargs: Any):
        try:
            from vllm import LLM  # lazy: only in the [gpu] extra
        except ImportError as e:
            raise BackendError("vllm backend needs vLLM: pip install 'tiebreak[gpu]'") from e
        self.model = model
        self.lora = lora
        self.name = name or (f"vllm:{model}+{Path(lora).name}" if lora else f"vllm:{model}")
        kw = dict(engine_kwargs)
        if lora:
            kw.setdefault("enable_lora", True)
            kw.setdefault("max_lora_rank", 64)
        self.llm = LLM(model=model, **kw)
        self._lora_req = None
        if lora:
            from vllm.lora.request import LoRARequest

            self._lora_req = LoRARequest("tuned", 1, lora)

    def _lora(self, use_lora: bool | None):
        return self._lora_req if (use_lora is None or use_lora) else None

    def generate(self, prompts: list[str], *, max_tokens: int = 256, temperature: float = 0.0,
                 use_lora: bool | None = None) -> list[str]:
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=0)
        outs = self.llm.chat([as_messages(p) for p in prompts], sp, lora_request=self._lora(use_lora), use_tqdm=False)
        return [o.outputs[0].text for o in outs]

    def choice_logprobs(self, prompt: PromptLike, choices: Sequence[str], *, use_lora: bool | None = None
                        ) -> dict[str, float]:
        return self.choice_logprobs_many([prompt], choices, use_lora=use_lora)[0]

    def choice_logprobs_many(self, prompts: list[PromptLike], choices: Sequence[str], *,
                             use_lora: bool | None = None) -> list[dict[str, float]]:
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS)
        outs = self.llm.chat([as_messages(p) for p in prompts], sp, lora_request=self._lora(use_lora), use_tqdm=False)
        res = []
        for o in outs:
            c = o.outputs[0]
            top: list[tuple[str, float]] = []
            if c.logprobs:
                top = [(lp.decoded_token or "", float(lp.logprob)) for lp in c.logprobs[0].values()]
            res.append(scores_from_top(top, c.text, choices))
        return res

    def close(self) -> None:
        """Stop the engine's worker processes (best effort: vLLM's ``LLM`` has no public shutdown)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None


# --------------------------------------------------------------------------- factory

def prompt_format_problem(spec: dict) -> str | None:
    """Why a MODEL spec's ``prompt_format`` is invalid (None if it is fine or absent)."""
    fmt = spec.get("prompt_format")
    if fmt is None:
        return None
    if spec.get("backend", "gguf") != "gguf":
        return ("spec field 'prompt_format' applies to gguf models only (an OpenAI-compatible server or vLLM "
                "applies the model's own chat template)")
    if fmt not in PROMPT_FORMATS:
        return (f"spec field 'prompt_format' = {fmt!r} is invalid; valid choices: {', '.join(PROMPT_FORMATS)} "
                "(default: chat when the GGUF file has a chat template, else completion)")
    return None


_GGUF_CACHE: dict[tuple, GGUFBackend] = {}
_GGUF_LOCK = threading.Lock()


def make_backend(spec: dict) -> Backend:
    """Build a backend from a MODEL spec (DESIGN.md): ``{"backend": "gguf", "path"|"preset": ...}``,
    ``{"backend": "openai", "base_url": ..., "model": ...}``, ``{"backend": "vllm", "model": ..., "lora": ...}``.

    GGUF backends are shared per (path, n_ctx) within a process (one copy of the weights)."""
    if not isinstance(spec, dict):
        raise ValueError(f"model spec must be a dict with 'backend' in {list(BACKENDS)}, got {type(spec).__name__}")
    kind = spec.get("backend", "gguf")
    if kind not in BACKENDS:
        raise ValueError(f"spec field 'backend' = {kind!r} is invalid; valid choices: {', '.join(BACKENDS)}")
    why = prompt_format_problem(spec)
    if why:
        raise ValueError(why)
    if kind == "gguf":
        from tiebreak.judges.models import PRESETS, resolve_model, resolve_preset

        if spec.get("preset") is not None:
            if spec["preset"] not in PRESETS:
                raise ValueError(f"spec field 'preset' = {spec['preset']!r} is invalid; valid choices: "
                                 f"{', '.join(sorted(PRESETS))}")
            path = resolve_preset(spec["preset"])
            default_name = spec["preset"]
        elif spec.get("path"):
            path = resolve_model(str(spec["path"]))
            default_name = Path(path).stem
        else:
            raise ValueError("gguf spec needs field 'path' (a .gguf file) or 'preset' (valid choices: "
                             f"{', '.join(sorted(PRESETS))})")
        n_ctx = int(spec.get("n_ctx", 4096))
        key = (str(Path(path).resolve()), n_ctx)
        with _GGUF_LOCK:
            if key not in _GGUF_CACHE:
                _GGUF_CACHE[key] = GGUFBackend(path, n_ctx=n_ctx, n_threads=spec.get("n_threads"),
                                               name=spec.get("name") or default_name)
            return _GGUF_CACHE[key]
    if kind == "openai":
        for f in ("base_url", "model"):
            if not spec.get(f):
                raise ValueError(f"openai spec needs field {f!r} (fields: base_url, model, api_key?, api_key_env?, timeout?, "
                                 "max_retries?, concurrency?)")
        return OpenAIBackend(spec["base_url"], spec["model"], api_key=spec.get("api_key"),
                             api_key_env=spec.get("api_key_env"),
                             timeout=float(spec.get("timeout", 60.0)), max_retries=int(spec.get("max_retries", 4)),
                             concurrency=int(spec.get("concurrency", 4)), name=spec.get("name"))
    if not spec.get("model"):
        raise ValueError("vllm spec needs field 'model' (a HF model id or local path; optional 'lora')")
    extra = {k: v for k, v in spec.items() if k not in ("backend", "model", "lora", "name")}
    return VLLMBackend(spec["model"], lora=spec.get("lora"), name=spec.get("name"), **extra)
