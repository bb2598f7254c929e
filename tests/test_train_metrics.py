"""The run's curves: titled with the run's name, labelled axes, no duplicate panels, KL and
clip fraction when the run has them, a moving average beside the raw points."""

from __future__ import annotations

import json

from verirl.train.metrics import TRAIN_CURVES, curve_panels, curves_figure, plot_curves


def _rows(n: int, kl: bool) -> list[dict]:
    rows = []
    for s in range(1, n + 1):
        r = {"step": s, "reward_mean": (s % 4) / 4, "pass_rate": (s % 4) / 4, "entropy": 2 - s / n,
             "clip_frac": 0.01 * (s % 3), "response_length": 5.0}  # fmt: skip
        if kl:
            r["kl"] = 0.001 * s
        rows.append(r)
    return rows


def test_panels_skip_missing_and_duplicate_series():
    keys = [k for k, _, _ in curve_panels(_rows(10, kl=True), TRAIN_CURVES)]
    assert keys == ["reward_mean", "kl", "clip_frac", "entropy", "response_length"]
    keys = [k for k, _, _ in curve_panels(_rows(10, kl=False), TRAIN_CURVES)]
    assert "kl" not in keys and "pass_rate" not in keys  # β = 0; 0/1 rewards
    one_epoch = [{**r, "clip_frac": 0.0} for r in _rows(10, kl=False)]
    assert "clip_frac" not in [k for k, _, _ in curve_panels(one_epoch, TRAIN_CURVES)]


def test_figure_has_title_axis_labels_and_a_smoothed_line():
    fig = curves_figure(_rows(60, kl=True), TRAIN_CURVES, "grpo-beta")
    assert fig._suptitle.get_text() == "grpo-beta"
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["reward_mean", "kl", "clip_frac", "entropy",
                                             "response_length"]  # fmt: skip
    for a in axes:
        assert a.get_xlabel() == "step" and a.get_ylabel()
        assert len(a.lines) == 2  # raw points and their moving average
    assert axes[1].get_ylabel().startswith("KL")


def test_plot_file_is_named_after_the_run(tmp_path):
    run = tmp_path / "my-run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(5, False)))
    out = plot_curves(run, TRAIN_CURVES, f"{run.name}_curves")
    assert out == run / "my-run_curves.png" and out.stat().st_size > 0
