"""Chat generation through any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, the
llama.cpp server, hosted APIs): the ``openai`` backend of ``rephrase_v1``.

The server applies its model's chat template. Failures that may pass (HTTP 429 and 5xx,
timeouts, refused or dropped connections) are retried with exponential backoff, honouring
``Retry-After``; anything else fails at once with the server's own message. The API key is
read from an environment variable and lives only in the request headers: it is never put
in an error message, a log line, lineage or ``job.json``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

from filters.lm.base import require
from filters.lm.chat import ChatError, Generation

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAIChat:
    """One HTTP client (thread-safe, pooled connections) for one server and model."""

    def __init__(self, base_url: str, *, model: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 120.0, max_retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 max_connections: int = 16, sleep: Callable[[float], None] = time.sleep) -> None:
        httpx = require("httpx", "httpx", "openai rephrasing", "rephrase")
        root = base_url.rstrip("/")
        self.api = root if root.endswith("/v1") else f"{root}/v1"
        self.root = self.api.removesuffix("/v1")
        key = os.environ.get(api_key_env) if api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._httpx = httpx
        self._client = httpx.Client(timeout=timeout_s, headers=headers,
                                    limits=httpx.Limits(max_connections=max_connections))
        self.max_retries, self.backoff_s, self.max_backoff_s, self._sleep = max_retries, backoff_s, max_backoff_s, sleep
        self.retries = 0  # requests retried (429/5xx/connection), for the job's stats
        self._lock = threading.Lock()
        self.model = model or self._first_model()
        self.model_id = f"openai:{self.model}"
        self._tokenize: Callable[[str], int] | None = None

    # -- requests -----------------------------------------------------------------------
    def _request(self, method: str, url: str, json: dict | None = None) -> dict:
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.request(method, url, json=json)
            except self._httpx.UnsupportedProtocol as exc:  # a URL without http(s)://: retrying cannot help
                raise ChatError(f"{method} {url}: {exc}") from None
            except self._httpx.TransportError as exc:  # refused, reset, timed out
                problem, wait = f"{type(exc).__name__}: {exc}", None
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:
                        raise ChatError(f"{method} {url}: HTTP {response.status_code} but not JSON: "
                                        f"{response.text[:300]}") from None
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRY_STATUS:
                    raise ChatError(f"{method} {url}: {problem}", status=response.status_code)
                wait = _retry_after(response.headers.get("retry-after"))
            if attempt == self.max_retries:
                raise ChatError(f"{method} {url}: {problem} (gave up after {self.max_retries} retries)")
            with self._lock:
                self.retries += 1
            backoff = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
            self._sleep(min(self.max_backoff_s, wait) if wait is not None else backoff)
        raise AssertionError("unreachable")

    def _first_model(self) -> str:
        models = self._request("GET", f"{self.api}/models").get("data") or []
        if not models:
            raise ChatError(f"{self.api}/models lists no model: name one with `model:`")
        return str(models[0]["id"])

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float, top_p: float,
             seed: int) -> Generation:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p, "seed": seed}
        out = self._request("POST", f"{self.api}/chat/completions", body)
        try:
            choice, usage = out["choices"][0], out.get("usage") or {}
            return Generation(text=choice["message"].get("content") or "", finish_reason=choice.get("finish_reason"),
                              prompt_tokens=int(usage.get("prompt_tokens", 0)),
                              completion_tokens=int(usage.get("completion_tokens", 0)), model_id=self.model_id)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ChatError(f"POST {self.api}/chat/completions: unexpected answer ({exc!r}): {str(out)[:300]}") \
                from None

    # -- tokens ---------------------------------------------------------------------------
    def server_tokenizer(self) -> Callable[[str], int] | None:
        """Count tokens with the server's own tokenizer: llama.cpp's ``/extras/tokenize``
        (llama-cpp-python) or ``/tokenize`` (vLLM, llama.cpp's C++ server); None when the
        server has neither (hosted APIs)."""
        probes = ((f"{self.root}/extras/tokenize", lambda t: {"input": t, "model": self.model}),
                  (f"{self.root}/tokenize", lambda t: {"prompt": t, "model": self.model, "content": t}))
        for url, body in probes:
            try:
                answer = self._client.post(url, json=body("probe"))
            except self._httpx.TransportError:
                continue
            if answer.status_code == 200 and isinstance(answer.json().get("tokens"), list):
                return self._counter(url, body)
        return None

    def _counter(self, url: str, body: Callable[[str], dict]) -> Callable[[str], int]:
        return lambda text: len(self._request("POST", url, body(text))["tokens"])

    def close(self) -> None:
        self._client.close()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None
