"""The one progress display (verirl.progress): a rich bar on terminals, plain flushed lines
elsewhere, with the numbers a log reader needs (step, reward, KL, entropy, s/step, ETA)."""

from __future__ import annotations

import io

from verirl.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_mode_is_plain_off_a_terminal_and_rich_on_one():
    assert Progress("train", 3, stream=io.StringIO()).mode == "plain"
    bar = Progress("train", 3, stream=_Tty())
    assert bar.mode == "rich"
    bar.update(1, {"reward_mean": 0.5, "kl": 0.01, "entropy": 1.2})
    bar.close()
    assert "train" in bar.stream.getvalue()  # type: ignore[attr-defined]
    assert Progress("train", 3, enabled=False, stream=io.StringIO()).mode == "off"


def test_plain_lines_carry_step_reward_kl_entropy_speed_and_eta():
    out = io.StringIO()
    with Progress("train", 4, stream=out, interval=0) as bar:
        for step in range(4):
            bar.update(1, {"reward_mean": 0.25 * step, "kl": 0.002, "entropy": 1.5, "step": step})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train step 0/4 (0%)")  # a line at once: the log is never empty
    assert len(lines) == 5
    last = lines[-1]
    for part in ("train step 4/4 (100%)", "reward 0.750", "kl 0.002", "entropy 1.500", "s/step",
                 "eta 0:00:00"):  # fmt: skip
        assert part in last, (part, last)


def test_plain_lines_are_throttled_but_the_first_and_last_always_print():
    out = io.StringIO()
    with Progress("eval", 5, unit="problem", stream=out, interval=1e9) as bar:
        for _ in range(5):
            bar.update(1, "correct 0.500")
    lines = out.getvalue().splitlines()
    assert [ln.split("  ")[0] for ln in lines] == [
        "eval problem 0/5 (0%)",
        "eval problem 5/5 (100%)",
    ]


def test_a_stopped_run_logs_where_it_stopped_and_resumed_counts_start_at_done():
    out = io.StringIO()
    bar = Progress("train", 10, done=6, stream=out, interval=1e9)
    bar.update(1, {"reward_mean": 1.0})
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("train step 7/10 (70%)  reward 1.000")
