"""An OpenAI-compatible HTTP client (standard library only: ``urllib``).

Works with any server that speaks the OpenAI ``/v1/completions`` or
``/v1/chat/completions`` API: vLLM (``vllm serve``), llama.cpp's ``llama-server``,
Ollama (``http://localhost:11434/v1``), hosted APIs, and eggroll's own
:mod:`eggroll.llm.server`::

    from eggroll.llm.http import OpenAIBackend
    llm = OpenAIBackend("http://127.0.0.1:8000/v1", model="smollm2", api="completions")
    llm.generate(["x: 1,2 f: 3.0\\nx:"], max_tokens=16, stop=["\\n"])

The API key is read from the environment variable named by ``api_key_env``
(default ``OPENAI_API_KEY``); when it is unset no ``Authorization`` header is sent,
which is what local servers expect.

Failures: connection errors (also a dropped or cut-short answer), timeouts,
HTTP 408 / 409 / 429 and 5xx are retried ``max_retries`` times with exponential
backoff (``backoff * 2**attempt`` seconds, at most ``max_backoff``, or the
server's ``Retry-After``). When the retries are spent, or for other HTTP errors
(400, 401, 404 ...), :class:`LLMConnectionError` or :class:`LLMError` is raised
with the URL, the status and what to check. An attempt whose whole answer has
not arrived ``timeout`` seconds after it started is a timeout, even when the
server keeps trickling bytes. The longest a single prompt can block is about
``(max_retries + 1) * timeout`` plus the backoff sleeps (a socket read already
waiting at an attempt's deadline can add at most one more ``timeout``); it never
waits forever.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from eggroll.llm.base import Backend, LLMConnectionError, LLMError

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackend(Backend):
    """Batched completions from an OpenAI-compatible endpoint.

    Args:
        base_url: the API root including ``/v1``, e.g. ``http://127.0.0.1:8000/v1``.
        model: the model name the server knows.
        api: ``"completions"`` (raw text continuation, best for EvoLLM's pattern
            prompts) or ``"chat"`` (each prompt sent as one user message).
        api_key_env: environment variable holding the key (unset -> no header).
        timeout: seconds per attempt (connecting, waiting and reading the whole answer).
        max_retries: retries after the first attempt for transient failures.
        backoff: first backoff sleep in seconds (doubles each retry).
        max_backoff: longest single sleep in seconds.
        max_concurrency: requests in flight at once for a batch of prompts.
        system_prompt: optional system message for ``api="chat"``.
        extra_body: extra JSON fields sent with every request (e.g. ``top_p``).

    ``generate`` samples prompt ``i`` with seed ``seed + i`` and raises
    :class:`LLMConnectionError` (unreachable endpoint or timeouts after all retries)
    or :class:`LLMError` (a non-retryable HTTP error or a response without text).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api: str = "completions",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_concurrency: int = 4,
        system_prompt: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ):
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0 or max_retries < 0 or max_concurrency < 1:
            raise ValueError("need timeout > 0, max_retries >= 0 and max_concurrency >= 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api = api
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_concurrency = int(max_concurrency)
        self.system_prompt = system_prompt
        self.extra_body = dict(extra_body or {})
        self.name = f"openai:{self.base_url}:{model}:{api}"

    @property
    def url(self) -> str:
        """The endpoint prompts are posted to."""
        return self.base_url + ("/chat/completions" if self.api == "chat" else "/completions")

    def _complete(self, prompts: list[str], temperature: float, max_tokens: int, stop: Sequence[str], seed: int):
        """Completes each prompt (prompt ``i`` is sampled with seed ``seed + i``).

        Raises:
            LLMConnectionError: unreachable endpoint or timeouts after all retries.
            LLMError: a non-retryable HTTP error or a response without text.
        """
        stop = [s for s in stop if s]

        def one(i: int) -> str:
            body: dict[str, Any] = {
                "model": self.model,
                "max_tokens": int(max_tokens),
                "temperature": float(temperature),
                "seed": int(seed) + i,
                **self.extra_body,
            }
            if stop:
                body["stop"] = stop[:4]  # the OpenAI API accepts at most four
            if self.api == "chat":
                messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
                body["messages"] = messages + [{"role": "user", "content": prompts[i]}]
            else:
                body["prompt"] = prompts[i]
            return self._extract(self._post(body))

        if len(prompts) <= 1 or self.max_concurrency == 1:
            return [one(i) for i in range(len(prompts))]
        with ThreadPoolExecutor(min(self.max_concurrency, len(prompts))) as pool:
            return list(pool.map(one, range(len(prompts))))

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env, "")
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return {"Content-Type": "application/json", "Accept": "application/json", **auth}

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            wait = min(self.backoff * 2**attempt, self.max_backoff)
            deadline = time.monotonic() + self.timeout
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(self._read(response, deadline).decode("utf-8"))
            except urllib.error.HTTPError as err:
                detail = _error_text(err)
                if err.code not in _RETRY_STATUS:
                    raise LLMError(f"{self.url} answered HTTP {err.code}: {detail}. {_hint(err.code, self)}") from err
                last = f"HTTP {err.code}: {detail}"
                retry_after = err.headers.get("Retry-After") if err.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(float(retry_after), self.max_backoff)
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
                reason = getattr(err, "reason", err)
                last = f"{type(reason).__name__}: {reason}"
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise LLMError(f"{self.url} did not answer with JSON ({err})") from err
            if attempt < self.max_retries:
                time.sleep(wait)
        raise LLMConnectionError(
            f"could not get an answer from {self.url} after {self.max_retries + 1} attempts "
            f"(timeout {self.timeout:g} s each); last error: {last}. Is the server running and the "
            "base_url right (it should end in /v1)?"
        )

    def _read(self, response: http.client.HTTPResponse, deadline: float) -> bytes:
        """The whole body, read piece by piece so that a trickling server cannot outlast ``deadline``."""
        chunks = []
        while chunk := response.read1(65536):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the answer was not complete after {self.timeout:g} s")
            chunks.append(chunk)
        if response.length:  # the server closed before sending its Content-Length
            raise http.client.IncompleteRead(b"".join(chunks), response.length)
        return b"".join(chunks)

    def _extract(self, response: dict[str, Any]) -> str:
        try:
            choice = response["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError):
            text = None
        if text is None:
            raise LLMError(f"{self.url} answered without a completion text: {json.dumps(response)[:300]}")
        return str(text)


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        raw = err.read().decode("utf-8", "replace")
    except Exception:  # the body may be unreadable
        return str(err.reason)
    try:
        payload = json.loads(raw)
        message = payload.get("error", payload)
        if isinstance(message, dict):
            message = message.get("message", message)
        return str(message)[:300]
    except (json.JSONDecodeError, AttributeError):
        return raw[:300] or str(err.reason)


def _hint(code: int, client: OpenAIBackend) -> str:
    if code in (401, 403):
        return f"Check the API key in the environment variable {client.api_key_env}."
    if code == 404:
        return (
            f"Check base_url (it should end in /v1), the model name {client.model!r}, and that the "
            f"server offers the {client.api!r} API (try api='chat' or api='completions')."
        )
    return "Check the request options (model, max_tokens, stop)."
