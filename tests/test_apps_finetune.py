"""End-to-end EGGROLL fine-tuning through the ``eggroll finetune`` command.

For speed the model is a tiny random Llama written to a real GGUF file (the
SmolLM2 run lives in benchmarks/llm_finetune.py): the whole path is real
(GGUF loading, tokenizer, chat template, population generation, rewards,
EGGROLL ask/tell, orbax checkpoint, safetensors export, plot). The reward, a
user-supplied Python function, is the fraction of digits in the reply: the
random model starts near zero, and ES must raise it on held-out prompts.
"""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from eggroll.commands.finetune import app
from eggroll.finetune import FinetuneConfig, parse_layers, restore_checkpoint, select_leaves
from eggroll.models.io import gguf as gguf_io
from eggroll.models.io import load_model
from eggroll.models.llama import LlamaConfig, forward, init_params, merge_layers

REWARD = '''
def digits(completion, prompt):
    """Fraction of the reply's characters that are digits."""
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)
'''


def _tiny_gguf(path):
    from tokenizers.pre_tokenizers import ByteLevel

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = special + sorted(ByteLevel.alphabet()) + ["Ġt", "he"]
    config = LlamaConfig(
        vocab_size=len(tokens), dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, max_seq_len=512
    )
    params = init_params(config, jax.random.PRNGKey(0), scale=0.15)
    types = [3] * len(special) + [1] * (len(tokens) - len(special))
    gguf_io.write_gguf(str(path), config, params, tokens, ["Ġ t", "h e"], token_types=types)


def _model_and_reward(tmp_path):
    """The tiny GGUF model and the digit-fraction reward file, written into ``tmp_path``."""
    model = tmp_path / "tiny.gguf"
    _tiny_gguf(model)
    reward = tmp_path / "reward.py"
    reward.write_text(REWARD)
    return model, reward


def _comparable(path, out):
    """A file's content without wall-clock fields (and with the run's folder spelled ``OUT``)."""
    from eggroll.run.loop import is_wall_clock, without_wall_clock

    if path.suffix in (".json", ".jsonl"):
        text = path.read_text().replace(str(out), "OUT")
        rows = [json.loads(line) for line in text.splitlines()] if path.suffix == ".jsonl" else json.loads(text)
        return without_wall_clock(rows)
    if path.suffix == ".csv":
        table = [line.split(",") for line in path.read_text().splitlines()]
        keep = [i for i, name in enumerate(table[0]) if not is_wall_clock(name)]
        return [[row[i] for i in keep] for row in table]
    return path.read_bytes()


def test_finetune_command_raises_held_out_reward(tmp_path):
    model, reward = _model_and_reward(tmp_path)
    out = tmp_path / "run"
    args = ["--model", str(model), "--task", "python", "--reward", f"{reward}:digits"]
    args += ["--generations", "30", "--population", "16", "--prompts", "4", "--rank", "1"]
    args += ["--sigma", "0.05", "--lr", "0.005", "--max-new-tokens", "8", "--eval-every", "10"]
    args += ["--eval-prompts", "16", "--evolve", "attn,mlp,embed", "--checkpoint-every", "10", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held-out reward" in result.output

    record = json.loads((out / "history.json").read_text())
    evals = record["evals"]
    assert [e[0] for e in evals] == [0, 10, 20, 30]
    base, final = evals[0][1], evals[-1][1]
    assert final > base + 0.5, evals  # measured here: 0.01 -> 1.0 (0.07 / 0.23 / 0.95 with sigma 0.03)
    assert len(record["history"]) == 30 and all(h["tokens_per_s"] > 0 for h in record["history"])
    rows = [json.loads(line) for line in (out / "metrics" / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == list(range(0, 31))  # the base model's evaluation, then one per generation
    assert rows[0]["eval_reward"] == base and "reward_mean" not in rows[0]
    assert all(r["sigma"] > 0 and "update_norm" in r and "reward_mean" in r for r in rows[1:])
    assert [r["generation"] for r in rows if "eval_reward" in r] == [0, 10, 20, 30]
    assert (out / "finetune.png").stat().st_size > 10_000
    summary = json.loads((out / "result.json").read_text())
    assert summary["command"] == "finetune" and summary["stopped_by"] == "generations" and summary["generation"] == 30
    assert (summary["base_eval_reward"], summary["eval_reward"]) == (base, final)
    assert set(summary["files"]) == {"history", "plot", "checkpoints", "export", "samples"}
    # Completions before / after for the same held-out prompts, with their rewards, in result.json and samples.md.
    samples = summary["samples"]
    assert len(samples) == 8 and len({s["prompt"] for s in samples}) == 8
    assert np.mean([s["tuned_reward"] for s in samples]) > np.mean([s["base_reward"] for s in samples])
    assert sum(s["base"] != s["tuned"] for s in samples) >= 4  # the tuned model answers differently
    assert "base model vs generation 30" in (out / "samples.md").read_text()
    assert samples[0]["tuned"] in (out / "samples.md").read_text()
    assert f"held-out reward {base:.3f} -> {final:.3f}" in " ".join(result.output.split())  # printed before / after

    # The export is a Hugging Face directory eggroll (and transformers) can load; the checkpoint restores it.
    config, tuned, _ = load_model(str(out / "export"))
    _, base_params, _ = load_model(str(model))
    restored = restore_checkpoint(str(out / "checkpoints" / "30"), merge_layers(select_leaves(base_params)[0]))
    assert (out / "checkpoints" / "10").is_dir()  # every checkpoint is kept: each holds the weights of its generation
    at_10 = restore_checkpoint(str(out / "checkpoints" / "10"), base_params)
    assert not np.array_equal(at_10["layers"]["wq"], restored["layers"]["wq"])
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tuned), strict=True):
        np.testing.assert_array_equal(a, b)
    ids = [[5, 9, 40, 41]]
    assert not np.allclose(forward(config, tuned, ids), forward(config, base_params, ids))
    # transformers loads the export, and its logits are eggroll's logits of the tuned weights.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out / "export"), dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(hf_logits, np.asarray(forward(config, restored, ids)), atol=1e-4)
    assert not np.allclose(hf_logits, np.asarray(forward(config, base_params, ids)), atol=1e-3)
    # --evolve without "norm": the norms are frozen, the matrices moved.
    np.testing.assert_array_equal(tuned["layers"]["attn_norm"], base_params["layers"]["attn_norm"])
    np.testing.assert_array_equal(tuned["norm"], base_params["norm"])
    assert not np.array_equal(tuned["layers"]["wq"], base_params["layers"]["wq"])


def test_layer_selection_builds_segments_and_mask():
    assert parse_layers("all", 4) == {0, 1, 2, 3}
    assert parse_layers("last:2", 30) == {28, 29}
    assert parse_layers("0,5-7", 30) == {0, 5, 6, 7}
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("3-40", 30)
    with pytest.raises(ValueError, match="bad layer spec"):
        parse_layers("first", 30)
    config = LlamaConfig(vocab_size=20, dim=16, n_layers=4, n_heads=2, n_kv_heads=1, hidden_dim=24)
    params = init_params(config, jax.random.PRNGKey(0))
    split, mask = select_leaves(params, layers="2-3", evolve="attn,norm")
    assert [s["wq"].shape[0] for s in split["layers"]] == [2, 2]
    assert mask["layers"][0] == {k: False for k in split["layers"][0]}
    assert mask["layers"][1]["wq"] and mask["layers"][1]["attn_norm"] and not mask["layers"][1]["w_up"]
    assert mask["norm"] and not mask["embed"]
    assert jax.tree.structure(mask) == jax.tree.structure(split)
    with pytest.raises(ValueError, match="unknown leaf kinds"):
        select_leaves(params, evolve="attn,ffn")
    with pytest.raises(ValueError, match="--group-size 3 must divide --population 16"):
        FinetuneConfig(population=16, prompts_per_generation=4, group_size=3).resolved_group_size()


@pytest.mark.parametrize(
    ("option", "says"),
    [
        ({"prompts_per_generation": 0}, "--prompts (prompts_per_generation) must be >= 1, got 0"),
        ({"eval_prompts": 0}, "--eval-prompts must be >= 1"),
        ({"temperature": -1.0}, "--temperature must be >= 0"),
    ],
)
def test_config_from_python_refuses_what_the_command_refuses(option, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        FinetuneConfig(**option).resolved_group_size()


def test_reward_file_that_fails_to_import_exits_2_in_one_line(tmp_path):
    """Refused before the model loads (none is named: the default one is never read)."""
    broken = tmp_path / "broken.py"
    broken.write_text("def f(completion, prompt):\n    return 1.0\nx = (\n")
    refused = CliRunner().invoke(app, ["--task", "python", "--reward", f"{broken}:f", "--out", str(tmp_path / "o")])
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "failed to import: SyntaxError" in text, refused.output
    assert "Traceback" not in refused.output and text.count("error: ") == 1


def test_weights_saved_alone_restore_too(tmp_path):
    """restore_checkpoint also reads weights written by save_checkpoint (not a run's checkpoint)."""
    from eggroll.finetune import save_checkpoint

    config = LlamaConfig(vocab_size=20, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=24)
    params = init_params(config, jax.random.PRNGKey(1))
    path = save_checkpoint(str(tmp_path / "weights"), 3, params)
    assert path.endswith("3")
    for a, b in zip(jax.tree.leaves(restore_checkpoint(path, params)), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        restore_checkpoint(str(tmp_path / "nowhere"), params)


def test_a_tokenizer_with_ids_past_the_models_vocabulary_is_refused(tmp_path):
    """Prompt ids the embedding does not have would be embedded as garbage: evaluation names the first one."""
    from eggroll.apps.finetune import evaluate_model
    from eggroll.problems.tasks import make_task

    model, reward = _model_and_reward(tmp_path)
    _, _, tok = load_model(str(model))
    small = LlamaConfig(vocab_size=20, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=24)
    task = make_task("python", f"{reward}:digits")
    with pytest.raises(ValueError, match="token id .* is outside the vocabulary of 20 ids"):
        evaluate_model(small, init_params(small, jax.random.PRNGKey(1)), tok, task, task.examples(1, seed=0), 2)


def test_restore_checkpoint_refuses_other_shapes_and_unreadable_folders(tmp_path):
    """Weights of another model size are refused naming a leaf; a folder that is no checkpoint is a CheckpointError."""
    from eggroll.finetune import save_checkpoint
    from eggroll.run.checkpoint import Checkpointer, CheckpointError

    configs = [LlamaConfig(vocab_size=20, dim=d, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=24) for d in (16, 32)]
    params, wider = (init_params(config, jax.random.PRNGKey(1)) for config in configs)
    saved = save_checkpoint(str(tmp_path / "weights"), 3, params)
    run = Checkpointer(tmp_path / "run" / "checkpoints", async_save=False)  # a run's checkpoint holds the mean
    run.save(1, {"carry": {"state": {"mean": params}}})
    run.close()
    step = tmp_path / "run" / "checkpoints" / "1"
    np.testing.assert_array_equal(restore_checkpoint(str(step), params)["embed"], params["embed"])
    for path in (str(step), saved):
        with pytest.raises(ValueError, match=r"holds \['embed'\] of shape \(20, 16\), but `like` has \(20, 32\)"):
            restore_checkpoint(path, wider)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*; point at a run's <out>/checkpoints/"):
        restore_checkpoint(str(tmp_path / "run"), params)  # the run's folder, not one of its checkpoints
    (step / "items" / "_METADATA").write_text('{"tree_metadata": {')  # truncated
    with pytest.raises(CheckpointError, match="is damaged: items/_METADATA does not match its checksum"):
        restore_checkpoint(str(step), params)
    with open(f"{saved}/_METADATA", "r+b") as f:  # no checksums here: orbax's own error, said as a CheckpointError
        f.truncate(20)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        restore_checkpoint(saved, params)


def test_finetune_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path):
    """A run stopped by a real SIGTERM after generation 2 and resumed ends with the same weights and files."""
    import os
    import signal

    from eggroll.finetune import finetune

    model, reward = _model_and_reward(tmp_path)
    args = ["--model", str(model), "--task", "python", "--reward", f"{reward}:digits", "--generations", "4"]
    args += ["--population", "8", "--prompts", "2", "--sigma", "0.05", "--lr", "0.005", "--max-new-tokens", "4"]
    args += ["--eval-every", "2", "--eval-prompts", "2", "--evolve", "attn,mlp,embed", "--no-export"]
    whole = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output

    out = tmp_path / "split"
    cfg = FinetuneConfig(
        task="python", model=str(model), reward=f"{reward}:digits", generations=4, population=8,
        prompts_per_generation=2, sigma=0.05, learning_rate=0.005, max_new_tokens=4, eval_every=2, eval_prompts=2,
        evolve="attn,mlp,embed", export=False, out_dir=str(out),
    )  # fmt: skip
    kill = lambda rec: os.kill(os.getpid(), signal.SIGTERM) if rec["generation"] == 2 else None  # noqa: E731
    stopped = finetune(cfg, callback=kill)
    assert stopped.interrupted == "SIGTERM" and [h["generation"] for h in stopped.history] == [1, 2]

    fresh = CliRunner().invoke(app, [*args, "--out", str(out)])  # forgot --resume: refused, nothing overwritten
    assert fresh.exit_code == 2 and "pass --resume" in " ".join(fresh.output.split())
    other = CliRunner().invoke(app, [*args, "--out", str(out), "--resume", "--sigma", "0.04"])
    assert other.exit_code == 2 and "sigma: 0.05 in the checkpoint, 0.04 now" in " ".join(other.output.split())
    resumed = CliRunner().invoke(app, [*args, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from generation 2" in " ".join(resumed.output.split())

    _, base_params, _ = load_model(str(model))
    like = merge_layers(select_leaves(base_params)[0])
    want = restore_checkpoint(str(tmp_path / "whole" / "checkpoints" / "4"), like)
    got = restore_checkpoint(str(out / "checkpoints" / "4"), like)
    assert not np.array_equal(want["layers"]["wq"], base_params["layers"]["wq"])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    record = json.loads((out / "history.json").read_text())
    assert [h["generation"] for h in record["history"]] == [1, 2, 3, 4]
    assert [e[0] for e in record["evals"]] == [0, 2, 4]

    # Every file in --out but the checkpoints (and TensorBoard events) equals the uninterrupted run's,
    # wall-clock fields aside.
    def listing(folder):
        skip = {"checkpoints", "tensorboard"}
        return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and not skip & set(p.parts))

    files = listing(out)
    assert files == listing(tmp_path / "whole")
    assert {"history.json", "result.json", "finetune.png", "metrics/metrics.jsonl"} <= {str(f) for f in files}
    for name in files:
        assert _comparable(out / name, out) == _comparable(tmp_path / "whole" / name, tmp_path / "whole"), name


def test_finetune_devices_split_the_population_like_one_device(tmp_path):
    """`--devices 4` generates each member's completions on its own device; same rewards, same update."""
    model, reward = _model_and_reward(tmp_path)
    args = ["--model", str(model), "--task", "python", "--reward", f"{reward}:digits", "--generations", "3"]
    args += ["--population", "8", "--prompts", "2", "--sigma", "0.05", "--lr", "0.005", "--max-new-tokens", "4"]
    args += ["--eval-every", "3", "--eval-prompts", "2", "--evolve", "attn,mlp,embed", "--no-export"]
    runs = {}
    for devices in ("1", "4"):
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / devices), "--devices", devices])
        assert result.exit_code == 0, result.output
        runs[devices] = json.loads((tmp_path / devices / "history.json").read_text())["history"]
    assert "on 4 devices" in " ".join(result.output.split())
    for a, b in zip(runs["1"], runs["4"], strict=True):
        assert (a["reward_mean"], a["reward_max"], a["tokens"]) == (b["reward_mean"], b["reward_max"], b["tokens"])
        np.testing.assert_allclose(a["update_norm"], b["update_norm"], rtol=1e-4)
    _, base_params, _ = load_model(str(model))
    like = merge_layers(select_leaves(base_params)[0])
    one, four = (restore_checkpoint(str(tmp_path / d / "checkpoints" / "3"), like) for d in ("1", "4"))
    assert not np.array_equal(one["layers"]["wq"], base_params["layers"]["wq"])
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    uneven = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "u"), "--devices", "3"])
    assert uneven.exit_code == 2 and "cannot be split over 3 devices" in " ".join(uneven.output.split())


def test_finetune_time_budget_quiet_and_bad_input(tmp_path):
    """--time-budget ends the run early (with a last evaluation); --quiet shows no progress; bad input exits 2."""
    model, reward = _model_and_reward(tmp_path)
    args = ["--model", str(model), "--task", "python", "--reward", f"{reward}:digits", "--population", "8"]
    args += ["--prompts", "2", "--sigma", "0.05", "--lr", "0.005", "--max-new-tokens", "4", "--eval-prompts", "2"]
    args += ["--evolve", "attn,mlp,embed", "--no-export", "--eval-every", "50", "--generations", "50"]
    out = tmp_path / "budget"
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--time-budget", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "time budget reached" in text and "EGGROLL fine-tuning" not in text and "sample:" not in text
    summary = json.loads((out / "result.json").read_text())
    assert summary["stopped_by"] == "time_budget" and 1 <= summary["generation"] < 50
    evals = json.loads((out / "history.json").read_text())["evals"]
    assert [e[0] for e in evals] == [0, summary["generation"]]  # the last generation is evaluated

    # From Python, a callback that returns True ends the run after that generation (which is then evaluated).
    from eggroll.finetune import finetune

    seen = []

    def stop_at_2(record):
        seen.append(record["generation"])
        return record["generation"] == 2

    cfg = FinetuneConfig(
        task="python", model=str(model), reward=f"{reward}:digits", generations=50, population=8,
        prompts_per_generation=2, sigma=0.05, learning_rate=0.005, max_new_tokens=4, eval_every=50, eval_prompts=2,
        evolve="attn,mlp,embed", export=False,
    )  # fmt: skip
    stopped = finetune(cfg, callback=stop_at_2)
    assert seen == [0, 1, 2] and stopped.stopped_by == "target" and not stopped.interrupted
    assert [h["generation"] for h in stopped.history] == [1, 2] and [e[0] for e in stopped.evals] == [0, 2]

    for bad, says in [
        (["--population", "7"], "--population must be even"),
        (["--generations", "0"], "Invalid value for '--generations'"),
        (["--checkpoint-every", "-1"], "Invalid value for '--checkpoint-every'"),
        (["--group-size", "3"], "--group-size 3 must divide --population 8"),
        (["--prompts", "8"], "--population 8 with --prompts 8 gives groups of 1 members"),
        (["--resume"], "No finished checkpoint"),
        (["--strategy", "cma"], "--strategy must be one of eggroll, open_es, got 'cma'"),
        (["--lr-decay", "2"], "--lr-decay must be in [0, 1]"),
    ]:
        refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad"), *bad])
        assert refused.exit_code == 2 and says in " ".join(refused.output.split()), (bad, refused.output)
        errors = [line for line in refused.output.splitlines() if line.startswith("error: ")]
        assert "Traceback" not in refused.output and len(errors) == 1, refused.output


def test_finetune_with_full_rank_openai_es_baseline(tmp_path):
    """--strategy open_es: dense members (the baseline of benchmarks/llm_finetune.py) through the same command."""
    model, reward = _model_and_reward(tmp_path)
    out = tmp_path / "oes"
    args = ["--model", str(model), "--task", "python", "--reward", f"{reward}:digits", "--strategy", "open_es"]
    args += ["--generations", "2", "--population", "8", "--prompts", "2", "--sigma", "0.05", "--lr", "0.005"]
    args += ["--max-new-tokens", "8", "--eval-prompts", "2", "--eval-every", "2", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "OpenAI-ES fine-tuning" in " ".join(result.output.split())
    _, base_params, _ = load_model(str(model))
    config, tuned, _ = load_model(str(out / "export"))
    rows = [json.loads(line) for line in (out / "metrics" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["update_norm"] > 0 for r in rows[1:]), rows  # the members' rewards differed: the mean moved
    pairs = zip(jax.tree.leaves(tuned), jax.tree.leaves(base_params), strict=True)
    assert all(not np.array_equal(a, b) for a, b in pairs)  # full rank: every leaf moves, norms included
    assert json.loads((out / "result.json").read_text())["generation"] == 2


def test_learning_rate_decay_schedule_and_resume_keeps_its_generations(tmp_path):
    """--lr-decay: linear from --lr at generation 1 to lr_decay * lr at the last; a resume must keep --generations."""
    import optax

    cfg = FinetuneConfig(generations=5, learning_rate=0.01, lr_decay=0.2)
    opt = cfg.optimizer()
    state = opt.init({"w": np.zeros(1, np.float32)})
    steps = []
    for _ in range(5):
        update, state = opt.update({"w": np.ones(1, np.float32)}, state)
        steps.append(-float(update["w"][0]))
    np.testing.assert_allclose(steps, [0.01, 0.008, 0.006, 0.004, 0.002], rtol=1e-5)
    assert isinstance(FinetuneConfig(learning_rate=0.01).optimizer(), optax.GradientTransformation)

    model, reward = _model_and_reward(tmp_path)
    args = ["--model", str(model), "--task", "python", "--reward", f"{reward}:digits", "--population", "4"]
    args += ["--prompts", "2", "--max-new-tokens", "2", "--eval-prompts", "2", "--no-export", "--lr-decay", "0.5"]
    out = str(tmp_path / "decay")
    assert CliRunner().invoke(app, [*args, "--generations", "2", "--out", out, "--quiet"]).exit_code == 0
    refused = CliRunner().invoke(app, [*args, "--generations", "4", "--out", out, "--resume"])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "generations: 2 in the checkpoint, 4 now" in said, refused.output
    assert "only --time-budget" in said  # --generations is not offered as changeable
