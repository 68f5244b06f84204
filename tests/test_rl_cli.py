"""`eggroll rl` end to end on a tiny CartPole run: files written, policy reloads, replay renders."""

import json

import jax
import numpy as np
from PIL import Image
from typer.testing import CliRunner

from eggroll.commands.rl import app
from eggroll.problems.rl.render import play_episode
from eggroll.rl_train import build, load_policy

runner = CliRunner()


def test_rl_command_trains_saves_plots_and_replays(tmp_path):
    out = tmp_path / "run"
    args = ["--env", "CartPole-v1", "--generations", "3", "--population", "16", "--horizon", "60"]
    args += ["--rollouts", "1", "--eval-every", "1", "--eval-episodes", "2", "--hidden", "8", "--quiet"]
    result = runner.invoke(app, [*args, "--out", str(out), "--render"])
    assert result.exit_code == 0, result.output
    assert "best evaluated return" in result.output
    for name in ("policy.msgpack", "policy.json", "history.json", "learning_curve.png", "replay.gif"):
        assert (out / name).stat().st_size > 0, name

    history = json.loads((out / "history.json").read_text())
    assert history["history"]["generation"] == [1, 2, 3]
    assert history["history"]["eval_generation"] == [0, 1, 2, 3]
    assert history["best_eval_return"] == max(history["history"]["eval_return"][1:])
    png = Image.open(out / "learning_curve.png")
    assert png.size[0] > 300 and png.size[1] > 200

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
    assert bad_pop.exit_code == 2 and "population_size must be even" in bad_pop.output
    bad_hidden = runner.invoke(app, ["--hidden", "32,abc"])
    assert bad_hidden.exit_code == 2 and "--hidden takes widths" in bad_hidden.output
    missing = runner.invoke(app, ["replay", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no saved policy" in missing.output
