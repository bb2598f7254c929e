"""Format reward: the completion must be exactly a sequence of tagged blocks, in order.

With the default tags the accepted shape is (whitespace allowed between and around blocks)::

    <think> ... </think> <answer> ... </answer>

Anything else scores 0: a missing, unclosed, duplicated, nested, mismatched or out-of-order
tag, or text outside the blocks. DeepSeek-R1 (2025) trains with such a format reward beside the
accuracy reward; a lenient one is gamed quickly (empty think blocks, answers repeated outside the
tags), so this one is strict and, by default, rejects empty blocks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from verirl.rewards.result import RewardResult

_ANY_TAG = re.compile(r"</?([A-Za-z][\w-]*)>")


def format_reward(
    completion: str,
    tags: Sequence[str] = ("think", "answer"),
    allow_empty: bool = False,
    prefilled: bool = False,
) -> RewardResult:
    """1.0 when `completion` is exactly ``<t1>…</t1> <t2>…</t2> …`` for `tags`, else 0.0.

    `prefilled=True` is for prompts that already end with ``<t1>``: the completion then starts
    inside the first block.

    >>> format_reward("<think>2+2=4</think>\\n<answer>4</answer>").reward
    1.0
    >>> format_reward("<answer>4</answer><think>x</think>").detail
    "expected <think> at offset 0, found '<answer>'"
    >>> format_reward("<think>a<think>b</think><answer>4</answer>").status
    'format_error'
    >>> format_reward("2+2=4</think><answer>4</answer>", prefilled=True).reward
    1.0
    """
    if not tags:
        raise ValueError("format_reward needs at least one tag name")
    names = set(tags)
    pos = 0
    text = completion
    for k, tag in enumerate(tags):
        opening, closing = f"<{tag}>", f"</{tag}>"
        if not (k == 0 and prefilled):
            pos = _skip_ws(text, pos)
            if not text.startswith(opening, pos):
                found = _ANY_TAG.match(text, pos)
                what = repr(found.group(0)) if found else repr(text[pos : pos + 20])
                return _bad(f"expected {opening} at offset {pos}, found {what}")
            pos += len(opening)
        end = text.find(closing, pos)
        if end < 0:
            return _bad(f"{opening} is never closed")
        inner = text[pos:end]
        for m in _ANY_TAG.finditer(inner):
            if m.group(1) in names:
                return _bad(f"tag {m.group(0)} inside <{tag}>…</{tag}>")
        if not allow_empty and not inner.strip():
            return _bad(f"empty <{tag}> block")
        pos = end + len(closing)
    rest = text[pos:]
    if rest.strip():
        stray = _ANY_TAG.search(rest)
        if stray is not None and stray.group(1) in names:
            return _bad(f"duplicated or stray tag {stray.group(0)} after the last block")
        return _bad(f"text after </{tags[-1]}>: {rest.strip()[:30]!r}")
    return RewardResult(1.0, "correct", {"format": 1.0}, "format ok")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _bad(detail: str) -> RewardResult:
    return RewardResult(0.0, "format_error", {"format": 0.0}, detail)
