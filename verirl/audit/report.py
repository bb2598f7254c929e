"""What `verirl audit` shows and writes: a terminal table, ``audit.json``, ``report.md``.

Completions are adversarial by design (lone surrogates, NUL bytes, 100k characters), so every
example is shown escaped and shortened; ``audit.json`` keeps them whole (JSON escapes
surrogates).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from verirl.audit.runner import AuditReport

MAX_TABLE = 30  # candidates shown in the terminal; audit.json and report.md have them all
KIND_TITLES = {
    "hack": "reward > 0 where it cannot be right",
    "false_negative": "the gold scored < 1",
    "infra": "no verdict (infra_error)",
}


def shown(text: Any, n: int = 80) -> str:
    """Printable, single-line, at most `n` characters.

    >>> shown("a\\nb\\ud800" + "x" * 100, 12)
    'a⏎b\\\\ud800xx…'
    """
    s = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    s = s.replace("\x00", "\\0").replace("\n", "⏎").replace("\t", " ")
    return s if len(s) <= n else s[: n - 1] + "…"


def _styles(styles: list[str], n: int = 2) -> str:
    return ", ".join(styles[:n]) + (f" +{len(styles) - n}" if len(styles) > n else "")


def _row_list(rows: list[str], n: int = 4) -> str:
    more = f" +{len(rows) - n}" if len(rows) > n else ""
    return f"{len(rows)} ({', '.join(rows[:n])}{more})"


def print_report(report: AuditReport) -> None:
    """The summary line and, when anything was found, a table of the findings."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    d = report.to_dict()
    c = d["counts"]
    console.print(
        f"audit {report.env}: {report.rows} rows × {report.probes // max(1, report.rows)} probes "
        f"({', '.join(report.batteries)}) in {report.seconds:.1f}s — "
        f"{c['hack']} hacks, {c['false_negative']} false negatives, {c['infra']} without verdict",
        markup=False,
    )
    for note in report.notes:
        console.print(f"note: {shown(note, 300)}", markup=False)
    if report.ok:
        console.print("no findings", style="green")
        return
    table = Table(title=f"audit findings: {report.env}")
    for col in ("finding", "candidate", "styles", "rows", "example", "reward"):
        table.add_column(col, overflow="fold")
    for g in d["groups"][:MAX_TABLE]:
        ex = g["example"]
        table.add_row(
            g["kind"], shown(g["candidate"], 36), _styles(g["styles"]), _row_list(g["rows"], 2),
            shown(ex["completion"], 40), f"{ex['reward']:.3g} {ex['status']}",
        )  # fmt: skip
    console.print(table)
    if len(d["groups"]) > MAX_TABLE:
        console.print(f"... and {len(d['groups']) - MAX_TABLE} more candidates (see audit.json)")


def markdown(report: AuditReport) -> str:
    """A short report.md: verdict, what ran, one line per finding group."""
    d = report.to_dict()
    c = d["counts"]
    verdict = "PASS: no findings" if report.ok else "FAIL"
    lines = [
        f"# Reward audit: `{report.env}`",
        "",
        f"**{verdict}** — {c['hack']} hacks, {c['false_negative']} false negatives, "
        f"{c['infra']} completions without a verdict.",
        "",
        f"- rows: {report.rows} of split `{report.split}`; probes scored: {report.probes} "
        f"in {report.seconds:.1f} s",
        f"- reward kinds: {', '.join(report.reward_kinds) or 'none declared'}; "
        f"batteries: {', '.join(report.batteries)}",
        f"- answer styles the env promises: {', '.join(report.promised_styles) or '-'}",
        f"- statuses: {', '.join(f'{k}={v}' for k, v in sorted(report.statuses.items()))}",
    ]
    lines += [f"- note: {shown(n, 300)}" for n in report.notes]
    if not report.ok:
        lines += ["", "| finding | candidate | styles | rows | example | gold | reward | detail |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for g in d["groups"]:
            ex = g["example"]
            cells = [
                KIND_TITLES[g["kind"]], f"`{shown(g['candidate'], 60)}`", _styles(g["styles"], 6),
                _row_list(g["rows"], 6), f"`{shown(ex['completion'], 60)}`",
                f"`{shown(ex['gold'], 30)}`", f"{ex['reward']:g} ({ex['status']})",
                shown(ex["detail"], 80),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: AuditReport, out: str | Path) -> list[Path]:
    """Write ``audit.json`` and ``report.md`` under `out` (created); returns their paths."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    j, m = d / "audit.json", d / "report.md"
    j.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    m.write_text(markdown(report), encoding="utf-8")
    return [j, m]
