"""passk.png: pass@k against k on a log axis, one curve per model, bootstrap bands shaded;
maj@k (when the env has answers to vote on) dashed in the same colour.

The picture of Yue et al. (2025): an RL-trained model usually starts higher at k = 1, the base
model's curve rises faster, and where they cross says how much of the gain is sharpening of
what the base model could already sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_passk(summary: dict[str, Any], path: str | Path) -> Path:
    """Draw the overall curves (and one panel per environment when there are several)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    models = {m: e for m, e in summary["models"].items() if "curve" in e}
    envs = list(dict.fromkeys(env for e in models.values() for env in e.get("per_env", {})))
    panels: list[str | None] = [None, *envs] if len(envs) > 1 else [None]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False, sharey=True
    )
    conf = round(100 * summary["confidence"])
    for ax, env in zip(axes[0], panels, strict=True):
        for name, e in models.items():
            if env is None:
                curve = e["curve"]
                k, y, lo, hi = curve["k"], curve["mean"], curve["lo"], curve["hi"]
            elif env in e["per_env"]:
                sub = e["per_env"][env]
                k = [int(x.split("@")[1]) for x in sub if x.startswith("pass@")]
                y = [sub[f"pass@{x}"] for x in k]
                lo = [sub["ci"][f"pass@{x}"][0] for x in k]
                hi = [sub["ci"][f"pass@{x}"][1] for x in k]
            else:
                continue
            (line,) = ax.plot(k, y, marker="o" if len(k) <= 20 else None, ms=3, label=name)
            ax.fill_between(k, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            src = e if env is None else e["per_env"][env]
            mk = [x for x in summary["ks"] if f"maj@{x}" in src]
            if mk:  # majority vote beside pass@k: dashed, same colour
                ax.plot(mk, [src[f"maj@{x}"] for x in mk], ls="--", marker="s", ms=3,
                        color=line.get_color(), label=f"{name} maj@k")  # fmt: skip
        if env is None:
            for c in summary.get("crossovers", []):
                if c.get("cross_k"):
                    ax.axvline(c["cross_k"], color="grey", ls=":", lw=1)
        kmax = max((max(e["curve"]["k"]) for e in models.values()), default=1)
        ax.set_xscale("log", base=2)
        ax.set_xlim(0.9, max(2, kmax) * 1.1)
        ks = [k for k in summary["ks"] if k <= kmax]
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("k (log scale)")
        ax.set_title(env or f"{summary.get('suite', 'samples')} ({summary['problems']} problems)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(f"pass@k ({conf}% bootstrap band)")
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out
