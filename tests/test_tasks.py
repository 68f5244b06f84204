"""Reward tasks: real reasoning-gym verifiers, format / length rewards, user reward functions."""

from __future__ import annotations

import pytest

from eggroll.problems.tasks import (
    Example,
    FormatTask,
    LengthTask,
    assign_prompts,
    extract_answer,
    load_reward_fn,
    make_task,
)


def test_countdown_rewards_use_the_reasoning_gym_verifier():
    task = make_task("countdown")
    exs = task.examples(4, seed=3)
    assert [e.prompt for e in exs] == [e.prompt for e in task.examples(4, seed=3)]  # deterministic
    assert [e.prompt for e in exs] != [e.prompt for e in task.examples(4, seed=4)]
    ex = exs[0]
    assert "<answer>" in ex.prompt and str(ex.data["metadata"]["target"]) in ex.prompt
    right = f"Let me try.\n<answer>{ex.answer}</answer>"
    assert task.reward(right, ex) == pytest.approx(1.1) and task.correct(right, ex)
    wrong = "<answer>1 + 1</answer>"
    assert task.reward(wrong, ex) < 0.5 and not task.correct(wrong, ex)
    assert task.reward(wrong, ex) >= 0.1  # the format bonus
    assert task.reward(ex.answer, ex) == pytest.approx(1.0)  # right but untagged: no format bonus
    assert task.reward("no idea", ex) < 0.05  # reasoning-gym gives a token credit to any non-empty answer
    # Another valid expression is also right: the verifier evaluates, it does not compare strings.
    nums = ex.data["metadata"]["numbers"]
    assert task.correct(f"<answer>{' + '.join(map(str, nums))}</answer>", ex) == (
        sum(nums) == ex.data["metadata"]["target"]
    )


@pytest.mark.parametrize("name", ["chain_sum", "basic_arithmetic", "letter_counting", "spell_backward"])
def test_other_reasoning_gym_tasks(name):
    task = make_task(name)
    ex = task.examples(2, seed=0)[1]
    assert task.correct(f"<answer>{ex.answer}</answer>", ex)
    assert not task.correct("<answer>definitely wrong</answer>", ex)
    rewards = task.rewards([f"<answer>{ex.answer}</answer>", "?"], [ex, ex])
    assert rewards.shape == (2,) and rewards[0] > rewards[1]


def test_format_and_length_rewards():
    fmt = FormatTask()
    ex = fmt.examples(1, seed=0)[0]
    assert fmt.reward("<answer>12</answer>", ex) == 1.0 and fmt.correct(" <answer> -3 </answer>\n", ex)
    assert fmt.reward("The sum is <answer>12</answer>.", ex) == 0.5
    assert fmt.reward("12", ex) == 0.25
    assert fmt.reward("The answer is twelve, I think.", ex) == 0.0
    length = LengthTask(target_words=5)
    ex = length.examples(1, seed=0)[0]
    assert ex.prompt.startswith("Write one sentence about")
    assert length.reward("one two three four five", ex) == 1.0
    assert length.reward("one two three four five six seven", ex) == pytest.approx(0.6)
    assert length.reward("", ex) == 0.0


def test_user_reward_function(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(
        "def shout(completion, prompt):\n    return float(completion.isupper()) + (1 / 0 if 'x' in completion else 0)\n"
    )
    task = make_task("python", reward=f"{path}:shout", prompts=["say hi", "say bye"])
    ex = task.examples(3, seed=0)[0]
    assert ex.prompt in ("say hi", "say bye")
    assert task.reward("HELLO", ex) == 1.0 and task.reward("hello", ex) == 0.0
    assert task.reward("x marks", ex) == 0.0  # an exception in the user's reward counts as 0
    with pytest.raises(ValueError, match="file.py:function"):
        load_reward_fn("no_colon")
    with pytest.raises(FileNotFoundError):
        load_reward_fn(str(tmp_path / "missing.py") + ":f")
    with pytest.raises(ValueError, match="no callable"):
        load_reward_fn(f"{path}:nothing")


def test_prompts_are_shared_within_groups():
    exs = [Example(prompt=str(i)) for i in range(4)]
    groups = assign_prompts(exs, population_size=8, group_size=4)  # 2 groups, 2 prompts each
    assert [[e.prompt for e in g] for g in groups] == [["0", "1"]] * 4 + [["2", "3"]] * 4
    assert [g[0].prompt for g in assign_prompts(exs, 8, 2)] == ["0", "0", "1", "1", "2", "2", "3", "3"]
    with pytest.raises(ValueError, match="divide"):
        assign_prompts(exs, 8, 3)
    with pytest.raises(ValueError, match="evenly"):
        assign_prompts(exs[:3], 8, 4)


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task"):
        make_task("no-such-task")
    assert extract_answer("a <answer>1</answer> b <answer> 2 </answer>") == "2"
    assert extract_answer("none") is None
