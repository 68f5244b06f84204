"""Byte-level text problem: corpus, baselines, the bits-per-byte fitness, and a short training run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eggroll.problems import text


@pytest.fixture(scope="module")
def split():
    return text.split_bytes(text.load_corpus(), 0.1)


def test_default_corpus_loads_and_splits(split):
    train, valid = split
    assert train.dtype == np.uint8 and len(train) > 400_000
    assert abs(len(valid) / (len(train) + len(valid)) - 0.1) < 0.001
    assert bytes(train[:4]).isascii()


def test_baselines_match_direct_counts(split):
    train, valid = split
    counts = np.bincount(train, minlength=256) + 1.0
    p = counts / counts.sum()
    assert text.unigram_bits(train, valid) == pytest.approx(-np.mean(np.log2(p[valid])), rel=1e-12)
    # the unigram of a text on itself is (close to) its entropy; the bigram is well below both
    entropy = -np.sum(p * np.log2(p))
    assert text.unigram_bits(train, train) == pytest.approx(entropy, abs=0.01)
    assert text.bigram_bits(train, valid) < text.unigram_bits(train, valid) - 1.0
    # one conditional probability by hand
    tiny = np.frombuffer(b"abab", np.uint8)
    # after 'a': counts a->b = 2 of 2, smoothing 0.1 over 256 symbols
    pb = (2 + 0.1) / (2 + 25.6)
    assert text.bigram_bits(tiny, np.frombuffer(b"ab", np.uint8)) == pytest.approx(-math.log2(pb))


def test_bits_per_byte_of_int8_logits():
    targets = jnp.asarray([[3, 7]])
    assert float(text.bits_per_byte(jnp.zeros((1, 2, 256), jnp.int8), targets)[0]) == pytest.approx(8.0)
    # one logit 16 (= 1 bit) above the rest: p = 2 / (255 + 2)
    z = jnp.zeros((1, 2, 256), jnp.int8).at[0, :, 3].set(16)
    got = np.asarray(text.bits_per_byte(z, jnp.asarray([[3, 4]])))[0]
    assert got == pytest.approx(0.5 * (-math.log2(2 / 257) - math.log2(1 / 257)), rel=1e-6)


def test_bad_inputs_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        text.load_corpus(tmp_path / "missing.txt")
    small = tmp_path / "small.txt"
    small.write_bytes(b"tiny")
    with pytest.raises(ValueError, match="at least 4096"):
        text.load_corpus(small)
    with pytest.raises(ValueError, match="multiple of 2"):
        text.LMConfig(population=6, group_pairs=2).validate()
    with pytest.raises(ValueError, match="too short"):
        train = np.zeros(100, np.uint8)
        text.make_task(text.LMConfig(width=16, depth=1, population=64, chunk=32), train, train)


def test_groups_share_chunks_and_streams_wrap(split):
    train, valid = split
    cfg = text.LMConfig(width=16, depth=1, population=16, chunk=8, group_pairs=2)
    task = text.make_task(cfg, train, valid)
    assert task.train_streams.shape[0] == 4  # 16 members / (2 * 2)
    x0, y0, reset0 = task.batch(0)
    x1, _, reset1 = task.batch(1)
    assert reset0 and not reset1 and x0.shape == (4, 8)
    np.testing.assert_array_equal(y0[:, :-1], x0[:, 1:])  # targets are the next bytes
    np.testing.assert_array_equal(x1[:, 0], y0[:, -1])  # chunks continue the stream
    xw, _, reset_w = task.batch(task.chunks_per_pass)
    assert reset_w
    np.testing.assert_array_equal(xw, x0)


def test_short_training_run_lowers_validation_bits(split):
    train, valid = split
    cfg = text.LMConfig(
        width=16, depth=1, population=128, chunk=32, generations=30, sigma_shift=3, alpha_end=1.0, seed=1
    )
    task = text.make_task(cfg, train, valid)
    carry, history = text.train_lm(task, valid_every=30)
    start, end = history[0]["valid_bpb"], history[-1]["valid_bpb"]
    assert history[-1]["generation"] == 30 and int(carry.generation) == 30
    assert carry.es_state.mean["head"].dtype == jnp.int8 and carry.hidden.dtype == jnp.int8
    assert start > 7.0 and end < start - 1.2, (start, end)
    # a stop flag (e.g. SIGTERM) ends the run after the current generation, scored on the validation split
    polls = []
    carry2, history2 = text.train_lm(task, carry, generations=40, stop=lambda: polls.append(1) or True)
    assert int(carry2.generation) == 31 and len(polls) == 1 and "valid_bpb" in history2[-1]


def test_train_lm_leaves_the_passed_carry_usable(split):
    train, valid = split
    task = text.make_task(text.LMConfig(width=16, depth=1, population=8, chunk=8, generations=4), train, valid)
    carry, _ = text.train_lm(task, generations=2, validate_first=False)
    first, _ = text.train_lm(task, carry, generations=4, validate_first=False)
    assert not any(x.is_deleted() for x in jax.tree.leaves(carry))  # the step donated a copy, not these
    assert float(task.validate(carry.es_state.mean)) > 0  # still readable
    second, _ = text.train_lm(task, carry, generations=4, validate_first=False)
    assert int(first.generation) == int(second.generation) == 4
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), first, second))
