"""`eggroll rl` end to end on a tiny CartPole run: files written, policy reloads, replay renders."""

import dataclasses
import json

import jax
import numpy as np
from PIL import Image
from typer.testing import CliRunner

from eggroll.commands.rl import app
from eggroll.problems.rl.render import play_episode
from eggroll.rl_train import build, load_policy

runner = CliRunner()


def test_rl_command_trains_saves_plots_and_replays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = ["--env", "CartPole-v1", "--generations", "3", "--population", "16", "--horizon", "60"]
    args += ["--rollouts", "1", "--eval-every", "1", "--eval-episodes", "2", "--hidden", "8", "--quiet"]
    result = runner.invoke(app, [*args, "--out", "run", "--render"])  # a relative --out
    assert result.exit_code == 0, result.output
    assert "best evaluated return" in result.output
    # every file is printed once under --out (the replay was printed as run/run/replay.gif) and is in result.json
    printed = dict(
        line.split() for line in result.output.splitlines() if line.startswith("  ") and len(line.split()) == 2
    )
    assert printed["replay"] == "run/replay.gif" and all((tmp_path / p).is_file() for p in printed.values()), printed
    assert json.loads((out / "result.json").read_text())["files"]["replay"] == "replay.gif"
    for name in ("policy.msgpack", "policy.json", "history.json", "learning_curve.png", "replay.gif"):
        assert (out / name).stat().st_size > 0, name

    history = json.loads((out / "history.json").read_text())
    assert history["history"]["generation"] == [1, 2, 3]
    assert history["history"]["eval_generation"] == [0, 1, 2, 3]
    assert history["best_eval_return"] == max(history["history"]["eval_return"][1:])
    png = Image.open(out / "learning_curve.png")
    assert png.size[0] > 300 and png.size[1] > 200
    # one metrics row per generation (row 0: the initial policy's evaluation), as JSONL and CSV (eggroll.logging)
    rows = [json.loads(line) for line in (out / "metrics" / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1, 2, 3]
    assert [r["eval_return"] for r in rows] == history["history"]["eval_return"]
    rows = rows[1:]
    assert all(r["env_steps_per_s"] > 0 and r["sigma"] > 0 for r in rows)
    assert [r["mean_return"] for r in rows] == history["history"]["mean_return"]
    assert (out / "metrics" / "metrics.csv").read_text().count("\n") == 5
    record = json.loads((out / "result.json").read_text())
    assert record["command"] == "rl" and record["generation"] == 3 and record["stopped_by"] == "generations"
    assert record["best_eval_return"] == history["best_eval_return"]

    config, params, obs_stats = load_policy(out)
    assert config.hidden == (8,) and config.population_size == 16
    fitness, _, _, _ = build(config)
    episode = play_episode(fitness.env, fitness.policy, params, obs_stats, jax.random.key(0), horizon=60)
    assert 1 <= len(episode.rewards) <= 60 and episode.total == float(np.sum(episode.rewards))

    gif = Image.open(out / "replay.gif")
    assert gif.n_frames > 1

    replayed = runner.invoke(app, ["replay", str(out), "--out", str(tmp_path / "again"), "--seed", "3"])
    assert replayed.exit_code == 0, replayed.output
    assert (tmp_path / "again.gif").exists() and "episode return" in replayed.output


def test_rl_command_rejects_bad_input_with_a_clear_message(tmp_path):
    bad_env = runner.invoke(app, ["--env", "CartPole-v9", "--out", str(tmp_path / "x")])
    assert bad_env.exit_code == 2 and "unknown environment 'CartPole-v9'" in bad_env.output
    bad_pop = runner.invoke(app, ["--population", "15", "--out", str(tmp_path / "y")])
    assert bad_pop.exit_code == 2 and "population_size (--population) must be even" in bad_pop.output
    bad_hidden = runner.invoke(app, ["--hidden", "32,abc"])
    assert bad_hidden.exit_code == 2 and "--hidden takes widths" in bad_hidden.output
    missing = runner.invoke(app, ["replay", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no saved policy" in missing.output


TINY = ["--env", "CartPole-v1", "--population", "8", "--horizon", "30", "--rollouts", "1", "--hidden", "4"]
TINY += ["--eval-every", "2", "--eval-episodes", "1", "--quiet", "--checkpoint-every", "2"]


def test_rl_stopped_and_resumed_matches_an_uninterrupted_run(tmp_path):
    """Stopped twice (a --generations limit, then a real SIGTERM) and resumed: bit-identical final mean."""
    import os
    import signal

    from eggroll.checkpoint import Checkpointer
    from eggroll.rl_train import RLConfig, train

    whole = runner.invoke(app, [*TINY, "--generations", "5", "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    _, reference, ref_stats = load_policy(tmp_path / "whole")

    out = tmp_path / "split"
    first = runner.invoke(app, [*TINY, "--generations", "2", "--out", str(out)])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*TINY, "--generations", "5", "--out", str(out)])  # forgot --resume
    assert again.exit_code == 2 and "pass --resume" in " ".join(again.output.split())

    # The second leg receives SIGTERM during generation 4: it finishes it, checkpoints and stops.
    config = RLConfig(population_size=8, horizon=30, num_rollouts=1, hidden=(4,), eval_every=2, eval_episodes=1)
    config = dataclasses.replace(config, generations=5)
    kill = lambda gen, row: os.kill(os.getpid(), signal.SIGTERM) if gen == 4 else None  # noqa: E731
    stopped = train(
        config,
        False,
        kill,
        checkpoint_dir=out / "checkpoints",
        checkpoint_every=2,
        resume=True,
        log_dir=out / "metrics",
    )
    assert (stopped.resumed_from, stopped.generation, stopped.interrupted) == (2, 4, "SIGTERM")
    with Checkpointer(out / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 4

    resumed = runner.invoke(app, [*TINY, "--generations", "5", "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from generation 4" in " ".join(resumed.output.split())
    history = json.loads((out / "history.json").read_text())["history"]
    assert history["generation"] == [1, 2, 3, 4, 5] and history["eval_generation"] == [0, 2, 4, 5]
    rows = [json.loads(line) for line in (out / "metrics" / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1, 2, 3, 4, 5]  # each generation logged once across the stops
    _, params, stats = load_policy(out)
    for a, b in zip(jax.tree.leaves((params, stats)), jax.tree.leaves((reference, ref_stats)), strict=True):
        np.testing.assert_array_equal(a, b)  # the best (evaluated) policy and its observation statistics

    # The final mean and observation statistics, read back from each run's last checkpoint (nothing left to run).
    ends = [train(config, False, checkpoint_dir=d / "checkpoints", resume=True) for d in (tmp_path / "whole", out)]
    assert [e.generation for e in ends] == [5, 5]
    initial = build(config)[3]
    assert not np.array_equal(jax.tree.leaves(ends[0].final_params)[0], jax.tree.leaves(initial)[0])
    for a, b in zip(*(jax.tree.leaves((e.final_params, e.final_obs_stats)) for e in ends), strict=True):
        np.testing.assert_array_equal(a, b)

    other = runner.invoke(app, [*TINY, "--generations", "6", "--out", str(out), "--resume", "--sigma", "0.1"])
    assert other.exit_code == 2 and "sigma: 0.05 in the checkpoint, 0.1 now" in " ".join(other.output.split())
    missing = runner.invoke(app, [*TINY, "--out", str(tmp_path / "none"), "--resume"])
    assert missing.exit_code == 2 and "No finished checkpoint" in " ".join(missing.output.split())


def test_rl_devices_split_the_population_and_resume_across_device_counts(tmp_path):
    """`--devices 4` matches one device; a one-device checkpoint resumes on 4 devices; bad splits are refused."""
    args = [*TINY, "--population", "16"]
    one = runner.invoke(app, [*args, "--generations", "4", "--out", str(tmp_path / "one"), "--devices", "1"])
    four = runner.invoke(app, [*args, "--generations", "4", "--out", str(tmp_path / "four"), "--devices", "4"])
    assert one.exit_code == 0 and four.exit_code == 0, one.output + four.output
    assert "population split over 4 devices" in four.output
    rows = [
        [json.loads(line) for line in (tmp_path / d / "metrics" / "metrics.jsonl").read_text().splitlines()]
        for d in ("one", "four")
    ]
    assert [r["generation"] for r in rows[1]] == [0, 1, 2, 3, 4]  # 0: the initial policy's evaluation
    # Episodes are per member, so returns are identical; the update only differs by reduction order.
    assert [r.get("mean_return") for r in rows[0]] == [r.get("mean_return") for r in rows[1]]
    (_, p1, s1), (_, p4, s4) = load_policy(tmp_path / "one"), load_policy(tmp_path / "four")
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p4, s4)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    # Two generations on one device, the rest on four: the same run.
    split = tmp_path / "split"
    first = runner.invoke(app, [*args, "--generations", "2", "--out", str(split), "--devices", "1"])
    assert first.exit_code == 0, first.output
    rest = runner.invoke(app, [*args, "--generations", "4", "--out", str(split), "--devices", "4", "--resume"])
    assert rest.exit_code == 0, rest.output
    resumed_rows = [json.loads(line) for line in (split / "metrics" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("mean_return") for r in resumed_rows] == [r.get("mean_return") for r in rows[0]]

    uneven = runner.invoke(app, [*args, "--generations", "1", "--out", str(tmp_path / "u"), "--devices", "3"])
    assert uneven.exit_code == 2 and "cannot be split over 3 devices" in " ".join(uneven.output.split())
    too_many = runner.invoke(app, [*args, "--out", str(tmp_path / "m"), "--devices", "64"])
    assert too_many.exit_code == 2 and "device(s) are available" in " ".join(too_many.output.split())
    garbage = runner.invoke(app, [*args, "--out", str(tmp_path / "g"), "--devices", "many"])
    assert garbage.exit_code == 2 and "--devices takes a number" in " ".join(garbage.output.split())


def test_rl_runs_an_evosax_baseline_through_the_registry(tmp_path):
    """``--strategy evosax:SNES`` trains through the same task and loop (the RL study's third method)."""
    out = tmp_path / "snes"
    args = ["--strategy", "evosax:SNES", "--generations", "4", "--population", "32", "--sigma", "0.5"]
    result = CliRunner().invoke(app, [*args, "--eval-every", "2", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "history.json").read_text())
    assert record["config"]["strategy"] == "evosax:SNES"
    assert record["history"]["generation"] == [1, 2, 3, 4]
    assert record["best_eval_return"] > record["history"]["eval_return"][0]  # better than the initial policy
    bad = CliRunner().invoke(app, ["--strategy", "evosax:Nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown evosax algorithm 'Nope'" in bad.output
