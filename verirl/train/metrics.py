"""Run logging: ``metrics.jsonl`` (one object per step), TensorBoard events, sample
completions, and ``<name>_curves.png`` at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from verirl.jsonl import append_jsonl, read_jsonl, write_jsonl


class MetricsLogger:
    """Appends one JSON row per step to ``metrics.jsonl`` (``append_jsonl``: flushed at once, so
    a killed run keeps its rows) and the scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, keep_upto: int | None = None):
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        if keep_upto is not None and self.path.exists():
            # Resuming: rows after the checkpoint were made by the killed process; drop them
            # so the file reads as one unbroken run.
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= keep_upto]
            write_jsonl(self.path, kept)
        self.path.touch()  # a run dir has its metrics file from the start (``RUN_MARKERS``)
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        append_jsonl(self.path, [row])
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, row["step"])

    def samples(self, step: int, items: list[dict[str, Any]]) -> None:
        append_jsonl(self.run_dir / "samples.jsonl", [{"step": step, **it} for it in items])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/metrics.jsonl`` (a missing file or bad line: DataError)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


# Panels of a training run's curves, in order; absent or duplicate series are left out.
TRAIN_CURVES = ("reward_mean", "pass_rate", "kl", "clip_frac", "entropy", "response_length")
SFT_CURVES = ("loss", "grad_norm")
# Metrics whose all-zero series says only that the mechanism is off.
ZERO_MEANS_ABSENT = frozenset({"kl", "clip_frac"})
Y_LABELS = {
    "reward_mean": "mean reward",
    "pass_rate": "share of samples correct",
    "kl": "KL(π_θ ‖ π_ref) per token",
    "clip_frac": "share of tokens clipped",
    "entropy": "entropy (nats/token)",
    "response_length": "tokens per completion",
    "loss": "loss",
    "grad_norm": "gradient norm",
}


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over `window` points (fewer at the start).

    >>> smooth([0.0, 1.0, 2.0, 3.0], 2)
    [0.0, 0.5, 1.5, 2.5]
    """
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def curve_panels(
    rows: list[dict[str, Any]], keys: tuple[str, ...]
) -> list[tuple[str, list[int], list[float]]]:
    """(key, steps, values) per panel: keys with no values are left out, and so is a key whose
    series equals an earlier panel's (pass_rate is reward_mean for 0/1 rewards), and a KL or
    clip fraction that is 0 throughout (β = 0; one epoch, where the ratio is 1).

    >>> rows = [{"step": s, "reward_mean": r, "pass_rate": r, "kl": 0.0} for s, r in [(1, 0), (2, 1)]]
    >>> [k for k, _, _ in curve_panels(rows, ("reward_mean", "pass_rate", "kl"))]
    ['reward_mean']
    """
    panels: list[tuple[str, list[int], list[float]]] = []
    for key in keys:
        pts = [(int(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), int | float)]
        if not pts:
            continue
        steps, values = [p[0] for p in pts], [p[1] for p in pts]
        if any(s == steps and v == values for _, s, v in panels):
            continue
        if key in ZERO_MEANS_ABSENT and not any(values):
            continue
        panels.append((key, steps, values))
    return panels


def curves_figure(rows: list[dict[str, Any]], keys: tuple[str, ...], title: str) -> Any:
    """The matplotlib figure of `plot_curves`: one panel per metric (see `curve_panels`), raw
    points with a moving average over them, axis labels, the run's name as the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels(rows, keys) or [(keys[0], [], [])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (key, steps, values) in zip(axes[0], panels, strict=True):
        if steps:
            window = max(1, len(values) // 20)
            ax.plot(steps, values, ".", ms=3, alpha=0.35, label="per step")
            if window > 1:
                ax.plot(steps, smooth(values, window), lw=1.8, label=f"mean of {window}")
                ax.legend(loc="best", fontsize=7)
        ax.set_xlabel("step")
        ax.set_ylabel(Y_LABELS.get(key, key))
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(
    run_dir: str | Path,
    keys: tuple[str, ...] = TRAIN_CURVES,
    name: str = "curves",
    title: str | None = None,
) -> Path:
    """``<run_dir>/<name>.png`` from metrics.jsonl (see `curves_figure`)."""
    import matplotlib.pyplot as plt

    fig = curves_figure(read_metrics(run_dir), keys, title or Path(run_dir).resolve().name)
    out = Path(run_dir) / f"{name}.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
