"""Built-in multi-turn envs (python_tool, code_feedback, guess_number) driven turn by turn with
scripted model turns through Episode/respond/score_episode; tool calls run in the real sandbox
(the session's warm Docker pool; one process-backend case)."""

from __future__ import annotations

import doctest
import importlib
import json
import os
import re

import pytest
from verirl.envs.multiturn import Episode, InfraError
from verirl.envs.registry import available_envs, make_env
from verirl.sandboxes.sandbox import Sandbox

from verirl.errors import DataError

MUL = {"question": "What is 347 * 862?", "answer": "299114"}


def play(env, row, turns):
    """Drive one episode as a rollout driver would: each scripted model turn is appended, the
    env answers, its messages are appended; stops when the env says done."""
    prompt = env.prompt(row)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    ep = Episode(row=row, messages=messages, state=env.start(row))
    for text in turns:
        assert ep.turns < env.max_turns, "the script has more turns than the env allows"
        ep.messages.append({"role": "assistant", "content": text})
        ep.turns += 1
        turn = env.respond(ep, text)
        ep.messages += turn.messages
        ep.tool_calls += turn.tool_calls
        ep.tool_errors += turn.tool_errors
        if turn.done:
            ep.done = True
            break
    ep.truncated = not ep.done
    return ep


class LostSandbox(Sandbox):
    """A sandbox whose containers die under every try: the pool's answer is ``infra``."""

    def _exec(self, jobs):
        return {}, "lost"


def env_messages(ep):
    return [m for m in ep.messages[1:] if m["role"] != "assistant"]


@pytest.fixture(scope="module")
def tool_env(docker_pool):
    env = make_env("python_tool", timeout=1.0)
    env.attach_sandbox(docker_pool)
    yield env
    env.close()


def test_envs_are_registered_multi_turn_and_their_doctests_pass():
    envs = available_envs()
    for name, stops in [("python_tool", ("</python>", "</tool_call>")), ("code_feedback", ()),
                        ("guess_number", ())]:  # fmt: skip
        assert envs[name]().multi_turn and envs[name].turn_stop == stops
    for mod in ("python_tool", "code_feedback", "games"):
        res = doctest.testmod(importlib.import_module(f"verirl.envs.{mod}"))
        assert res.attempted > 0 and res.failed == 0, (mod, res)


def test_envs_show_prints_the_turn_protocol(capsys):
    from verirl.cli import main

    assert main(["envs", "show", "python_tool"]) == 0
    out = capsys.readouterr().out
    assert "max_turns=4" in out and "'</python>', '</tool_call>'" in out
    assert re.search(r"^protocol: +the model may call Python", out, re.M), out
    assert main(["envs", "show", "arithmetic"]) == 0
    assert "max_turns=1" in capsys.readouterr().out


# ---- python_tool: data --------------------------------------------------------------------------
def test_python_tool_rows_are_seeded_disjoint_and_right():
    a, b = make_env("python_tool", seed=3), make_env("python_tool", seed=3)
    assert a.rows("train")[:50] == b.rows("train")[:50]
    assert a.make_row("test", 7) == b.rows("test")[7]  # any row alone, without the others
    assert make_env("python_tool", seed=4).rows("train")[:20] != a.rows("train")[:20]
    train, test = {r["question"] for r in a.rows("train")}, {r["question"] for r in a.rows("test")}
    assert not train & test
    kinds = set()
    for r in a.rows("train")[:200]:
        m = re.fullmatch(r"What is (\d{3}) \* (\d{3})\?", r["question"])
        kinds.add("mul" if m else "word")
        if m:
            assert int(r["answer"]) == int(m[1]) * int(m[2])
        else:
            assert int(r["answer"]) >= 0
    assert kinds == {"mul", "word"}
    only = make_env("python_tool", tasks="mul").rows("test")
    assert all(r["question"].startswith("What is") for r in only)


def test_python_tool_data_file_and_bad_rows(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text(json.dumps({"question": "2+2?", "answer": 4}) + "\n")
    assert make_env("python_tool", data=str(good)).rows()[0]["answer"] == "4"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(MUL) + "\n" + json.dumps({"question": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: row 2: missing field 'answer'"):
        make_env("python_tool", data=str(bad)).rows()


# ---- python_tool: turns in the sandbox ---------------------------------------------------------
@pytest.mark.docker
def test_tool_call_then_final_answer_is_correct(tool_env):
    ep = play(tool_env, MUL, ["Let me compute.\n<python>\nprint(347 * 862)\n</python>",
                              "So the answer is \\boxed{299114}."])  # fmt: skip
    tool = env_messages(ep)
    assert tool == [{"role": "tool", "content": "299114"}]
    assert (ep.done, ep.turns, ep.tool_calls, ep.tool_errors) == (True, 2, 1, 0)
    assert tool_env.score_episode(ep).status == "correct"


@pytest.mark.docker
def test_hermes_tool_call_and_fenced_code_run(tool_env):
    call = {"name": "python", "arguments": {"code": "x = 347\nprint(x * 862)"}}
    ep = play(tool_env, MUL, [f"<tool_call>\n{json.dumps(call)}\n</tool_call>",
                              "<python>```python\nprint('fenced')\n```</python>",
                              "The answer is 299114."])  # fmt: skip
    assert [m["content"] for m in env_messages(ep)] == ["299114", "fenced"]
    assert ep.tool_calls == 2 and ep.tool_errors == 0
    assert tool_env.score_episode(ep).reward == 1.0
    refused = [
        '<tool_call>{"name": "shell", "arguments": {}}</tool_call>',
        "<tool_call>" + "[" * 100_000 + "</tool_call>",
        "<tool_call>{'name': 1}",
    ]
    bad = play(tool_env, MUL, refused)
    got = [m["content"] for m in env_messages(bad)]
    assert "unknown tool 'shell'" in got[0] and bad.tool_errors == 3, got
    assert all(g.startswith("error: ") and len(g) < 200 for g in got), got


@pytest.mark.docker
def test_crash_is_a_tool_error_with_the_traceback(tool_env):
    ep = play(tool_env, MUL, ["<python>print('before')\nprint(1 / 0)</python>"])
    out = env_messages(ep)[0]["content"]
    assert out.startswith("before\n") and out.endswith("ZeroDivisionError: division by zero")
    assert "run_stdio" not in out  # the runner's own frame is not the model's business
    assert (ep.done, ep.tool_calls, ep.tool_errors) == (False, 1, 1)


@pytest.mark.docker
def test_infinite_loop_is_a_timeout_result_not_infra(tool_env):
    ep = play(tool_env, MUL, ["<python>while True:\n    pass</python>"])
    assert env_messages(ep)[0]["content"].startswith("timeout: the code was stopped after")
    assert ep.tool_errors == 1 and not ep.done


@pytest.mark.docker
def test_output_is_cut_to_output_chars(tool_env):
    ep = play(tool_env, MUL, ["<python>print('7' * 20000)</python>",
                              "<python>print('8' * 10**6)</python>"])  # fmt: skip
    long, flood = (m["content"] for m in env_messages(ep))
    assert long == "7" * 1000 + "\n... [19000 more characters cut]"
    assert len(flood) <= tool_env.output_chars + 100 and flood.startswith("8" * 400), flood
    assert flood.endswith("error: output limit exceeded (the program printed too much)")
    assert ep.tool_errors == 1


@pytest.mark.docker
def test_tool_code_sees_no_host_env_no_host_file_and_no_gold(tool_env, docker_pool, tmp_path,
                                                            monkeypatch):  # fmt: skip
    secret = tmp_path / "host_secret.txt"
    secret.write_text("HOST-FILE-CONTENT")
    monkeypatch.setenv("VERIRL_HOST_SECRET", "HOST-ENV-CONTENT")
    sent: list[dict] = []

    class Recording(Sandbox):
        def _exec(self, jobs):
            raise AssertionError("unused")

        def run(self, jobs):
            sent.extend(j.wire() for j in jobs)
            return docker_pool.run(jobs)

    env = make_env("python_tool", timeout=2.0)
    env.attach_sandbox(Recording())
    code = (
        "import os\n"
        "print('env', os.environ.get('VERIRL_HOST_SECRET'))\n"
        f"try:\n    print(open({str(secret)!r}).read())\nexcept OSError as e:\n"
        "    print('file', type(e).__name__)\n"
        f"print('dir', os.path.exists({str(tmp_path)!r}))\n"
    )
    ep = play(env, MUL, [f"<python>{code}</python>"])
    out = env_messages(ep)[0]["content"]
    assert "HOST-" not in out and "env None" in out and "file FileNotFoundError" in out, out
    assert "dir False" in out, out
    assert os.environ["VERIRL_HOST_SECRET"] == "HOST-ENV-CONTENT"  # the host had it
    assert len(sent) == 1 and MUL["answer"] not in json.dumps(sent)  # the gold never left


def test_process_fallback_runs_tool_calls(process_sandbox):
    env = make_env("python_tool", sandbox="process")
    env.attach_sandbox(process_sandbox)
    ep = play(env, MUL, ["<python>print(6 * 7)</python>"])
    assert env_messages(ep)[0]["content"] == "42" and ep.tool_errors == 0


@pytest.mark.docker
def test_sandbox_down_is_infra_error(monkeypatch, docker_pool):
    import verirl.sandboxes.docker_pool as dp

    monkeypatch.setattr(dp, "image_tag", lambda: "verirl-sandbox:no-such-image")
    env = make_env("python_tool", sandbox="docker")  # the engine runs; the image is missing
    with pytest.raises(InfraError, match="image verirl-sandbox:no-such-image missing"):
        play(env, MUL, ["<python>print(1)</python>"])

    env.attach_sandbox(LostSandbox())
    with pytest.raises(InfraError, match="sandbox died twice"):
        play(env, MUL, ["<python>print(1)</python>"])
    assert env.respond(Episode(row=MUL), "no call: the final answer").done  # no sandbox needed


# ---- python_tool: scoring the final turn -------------------------------------------------------
SCORED = [
    ("The answer is \\boxed{299114}.", "correct"),
    ("The answer is 299114.", "correct"),
    ("\\boxed{299114} or \\boxed{299115}", "incorrect"),  # a hedge
    ("The answer is 299114 or 299115.", "incorrect"),
    # Every candidate at once commits to none. (A boxed list is a list answer, compared by
    # sympy: incorrect too, measured by hand; sympy takes seconds to start, so not here.)
    ("Candidates: 299113, 299114, 299115", "format_error"),
    ("I computed 299113 and 299114 and 299115.", "format_error"),
    ("299114", "format_error"),  # a bare number is not an answer without the fallback
    ("<python>print(299114)</python>", "format_error"),  # ended on a tool call
]


@pytest.mark.parametrize(("final", "status"), SCORED)
def test_only_the_final_turn_is_scored_with_hedge_rules(final, status):
    env = make_env("python_tool")
    ep = Episode(row=MUL, messages=[
        {"role": "assistant", "content": "<python>print(list(range(299100, 299200)))</python>"},
        {"role": "tool", "content": "[299100, ..., 299114, ...]"},
        {"role": "assistant", "content": final},
    ])  # fmt: skip
    assert env.score_episode(ep).status == status


# ---- code_feedback -----------------------------------------------------------------------------
INC = {
    "prompt": 'def inc(x):\n    """x plus one"""\n',
    "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 6\n",
    "entry_point": "inc",
}
WRONG, RIGHT = "```python\ndef inc(x):\n    return x\n```", "    return x + 1\n"


@pytest.fixture(scope="module")
def feedback_env(docker_pool):
    env = make_env("code_feedback", timeout=2.0)
    env.attach_sandbox(docker_pool)
    yield env
    env.close()


@pytest.mark.docker
def test_code_feedback_retry_then_pass(feedback_env):
    ep = play(feedback_env, INC, [WRONG, "def inc(x):\n    raise ValueError('oops')\n", RIGHT])
    fb = env_messages(ep)
    assert [m["role"] for m in fb] == ["user", "user"]
    assert "assert #0 failed: 1 == 2 is false" in fb[0]["content"], fb[0]
    assert "ValueError" in fb[1]["content"] and "Fix the function" in fb[1]["content"]
    assert (ep.done, ep.turns, ep.tool_calls, ep.tool_errors) == (True, 3, 3, 1)
    res = feedback_env.score_episode(ep)
    assert res.status == "correct" and res.reward == 1.0


@pytest.mark.docker
def test_code_feedback_scores_the_final_submission_only(feedback_env):
    ep = play(feedback_env, INC, [WRONG, WRONG, WRONG])
    assert ep.truncated and feedback_env.score_episode(ep).status == "incorrect"
    # A driver that never answered the last turn: that turn is still what is scored.
    ep.messages[-2]["content"] = RIGHT  # the last assistant turn (before its feedback)
    del ep.messages[-1]
    assert feedback_env.score_episode(ep).status == "correct"
    status_only = make_env("code_feedback", feedback="status", max_turns=2)
    status_only.attach_sandbox(feedback_env._sandbox)
    fb = env_messages(play(status_only, INC, [WRONG]))[0]["content"]
    assert fb.startswith("The tests failed: a test assertion failed.") and "==" not in fb


def test_code_feedback_sandbox_down_is_infra_error():
    env = make_env("code_feedback")
    env.attach_sandbox(LostSandbox())
    with pytest.raises(InfraError, match="sandbox died twice"):
        play(env, INC, [RIGHT])


def test_code_feedback_bad_option():
    from verirl.errors import ConfigError

    with pytest.raises(ConfigError, match="feedback must be"):
        make_env("code_feedback", feedback="all")


# ---- guess_number ------------------------------------------------------------------------------
def binary_search_turns(env, row):
    """A scripted player: binary search, reading the env's replies."""
    low, high = row["low"], row["high"]
    prompt = env.prompt(row)
    ep = Episode(row=row, messages=list(prompt), state=env.start(row))
    while not ep.done and ep.turns < env.max_turns:
        guess = (low + high) // 2
        ep.messages.append({"role": "assistant", "content": str(guess)})
        ep.turns += 1
        turn = env.respond(ep, str(guess))
        ep.messages += turn.messages
        ep.done = turn.done
        reply = turn.messages[0]["content"]
        low, high = (guess + 1, high) if reply == "Higher." else (low, guess - 1)
    return ep


def test_guess_number_binary_search_always_wins():
    env = make_env("guess_number")
    rows = env.rows("test")
    assert rows == make_env("guess_number").rows("test")  # seeded
    for row in rows[:30]:
        ep = binary_search_turns(env, row)
        assert ep.done and env.score_episode(ep).reward == 1.0, row


def test_guess_number_feedback_limits_and_gaming():
    env = make_env("guess_number", max_turns=3)
    row = {"target": 37, "low": 1, "high": 100}
    ep = play(env, row, ["50", "10", "20"])
    assert [m["content"] for m in env_messages(ep)] == ["Lower.", "Higher.", "Higher."]
    assert ep.truncated and env.score_episode(ep).status == "incorrect"
    every = " ".join(str(i) for i in range(1, 101))  # every candidate in one turn is no guess
    ep = play(env, row, [every, "1-100", "0"])
    assert env_messages(ep)[0]["content"] == "Reply with one integer from 1 to 100 only."
    assert env.score_episode(ep).status == "format_error"
    ep = play(env, row, ["50", "37\nI am sure."])
    assert ep.done and env_messages(ep)[-1]["content"] == "Correct!"
    assert env.score_episode(ep).detail == "guessed in 2"
