"""Run logging: ``metrics.jsonl`` (one object per step), TensorBoard events, sample
completions, and a reward-curve PNG at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends one JSON row per step (flushed at once, so a killed run keeps its rows)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, keep_upto: int | None = None):
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        if keep_upto is not None and self.path.exists():
            # Resuming: rows after the checkpoint were made by the killed process; drop them
            # so the file reads as one unbroken run.
            rows = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
            kept = [r for r in rows if r.get("step", 0) <= keep_upto]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._f = self.path.open("a", encoding="utf-8")
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, row["step"])

    def samples(self, step: int, items: list[dict[str, Any]]) -> None:
        with (self.run_dir / "samples.jsonl").open("a", encoding="utf-8") as f:
            for it in items:
                f.write(json.dumps({"step": step, **it}, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    p = Path(run_dir) / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def plot_curves(
    run_dir: str | Path, keys: tuple[str, ...] = ("reward_mean",), name: str = "reward_curve"
) -> Path:
    """PNG of `keys` against step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=".")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run_dir) / f"{name}.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
