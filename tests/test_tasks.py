"""Reward tasks: real reasoning-gym verifiers, format / length rewards, user reward functions."""

from __future__ import annotations

import pytest

from eggroll.problems.tasks import (
    MAX_ANSWER_CHARS,
    Example,
    FormatTask,
    LengthTask,
    assign_prompts,
    could_run_code,
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


def test_countdown_answers_are_never_run_as_code(tmp_path):
    """The verifier evaluates the answer with sympy: only plain arithmetic reaches it, the rest scores as malformed."""
    import time

    task = make_task("countdown")
    ex = task.examples(1, seed=0)[0]
    marker = tmp_path / "pwned"
    malformed = task.format_weight + 0.01  # the tags, plus reasoning-gym's score of a malformed answer
    for answer in (f"__import__('os').system('touch {marker}')", "9**9**9", "1" + " + 1" * 100):
        start = time.perf_counter()
        assert task.reward(f"<answer>{answer}</answer>", ex) == pytest.approx(malformed), answer
        assert time.perf_counter() - start < 1.0, answer
    assert not marker.exists()
    assert task.reward(f"<answer>{ex.answer}</answer>", ex) == pytest.approx(1.1)  # right arithmetic still scores
    assert set(ex.answer) <= set("0123456789+-*/() ")


def test_no_reasoning_gym_verifier_is_handed_an_answer_that_could_run_code(tmp_path):
    """Several verifiers evaluate the answer (simple_integration through sympy: `open(...)` created the file)."""
    marker = tmp_path / "pwned"
    for name in ("simple_integration", "spiral_matrix"):
        task = make_task(name)
        ex = task.examples(1, seed=0)[0]
        assert task.reward(f"<answer>open('{marker}', 'w')</answer>", ex) == pytest.approx(task.format_weight)
        assert task.correct(f"<answer>{ex.answer}</answer>", ex)  # a right answer (sympy or plain) still counts
    assert not marker.exists()
    for code in ("open('f', 'w')", "__import__('os')", "(lambda: 1)()", "().x", "a[0]", "9**9**9", "2**1000"):
        assert could_run_code(code), code
    for plain in ("42", "-3.5", "olleh", "[1, 2, 3]", "x**2 + 3*x", "sin(x)/2 + C", "x**(3/2)", "The answer is 5"):
        assert not could_run_code(plain), plain


def test_overlong_answers_are_scored_as_empty():
    task = make_task("spell_backward")
    ex = task.examples(1, seed=0)[0]
    padded = ex.answer + "x" * MAX_ANSWER_CHARS  # its verifier would give this full credit
    assert task.reward(f"<answer>{padded}</answer>", ex) == pytest.approx(task.format_weight)
    assert task.correct(f"<answer>{ex.answer}</answer>", ex)


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
    assert fmt.reward("<answer>٤٢</answer>", ex) == 0.5 and fmt.reward("٤٢", ex) == 0.0  # ASCII digits only
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


@pytest.mark.parametrize(
    ("code", "says"), [("x = (\n", "SyntaxError"), ("raise RuntimeError('boom')\n", "RuntimeError: boom")]
)
def test_reward_file_that_fails_to_import_is_a_value_error(tmp_path, code, says):
    path = tmp_path / "broken.py"
    path.write_text(code)
    with pytest.raises(ValueError, match=f"reward '.*broken.py' failed to import: {says}"):
        load_reward_fn(f"{path}:f")
    with pytest.raises(ValueError, match="failed to import: ModuleNotFoundError"):
        load_reward_fn("no_such_module_xyz:f")


def test_named_task_with_a_reward_function_keeps_its_prompts(tmp_path):
    path = tmp_path / "short.py"
    path.write_text("def short(completion, prompt):\n    return float(len(completion) < 5)\n")
    countdown = make_task("countdown")
    task = make_task("countdown", reward=f"{path}:short")
    assert [e.prompt for e in task.examples(3, seed=1)] == [e.prompt for e in countdown.examples(3, seed=1)]
    assert task.max_new_tokens == countdown.max_new_tokens and task.system == countdown.system
    assert task.name == f"countdown scored by {path}:short"
    assert task.reward("1+2", task.examples(1, seed=1)[0]) == 1.0
    with pytest.raises(ValueError, match="brings its own prompts"):
        make_task("countdown", reward=f"{path}:short", prompts=["hi"])


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
