"""Find the final answer in a model's completion.

Order of trust (first hit wins): the text after ``</think>`` when it holds an answer, then
``<answer>…</answer>``, the last ``\\boxed{…}``/``\\fbox{…}``, "Final Answer: …", GSM8K's
``#### n``, "the answer is …", and, if enabled, the last number in the text.

Hedges score as wrong, not as the better of two guesses (a reward that accepts "3 or 5" teaches
the model to list candidates): an answer containing " or ", or two *different* boxed answers in
the final sentence, is reported as ``hedged``.

Every scan here is linear in the text (no backtracking regexes over unbounded input), so the
extraction runs in the caller's process; only the sympy comparison needs a worker with a
deadline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOX = re.compile(r"\\(?:boxed|fbox)\b\s*")
_FINAL = re.compile(r"final answer\s*(?:is)?\s*[:：]", re.I)
_THE_ANSWER_IS = re.compile(r"(?:the|my|final)\s+answer\s+is\s*[:：]?", re.I)
_GSM8K = re.compile(r"####\s*([^\n]{0,200})")
# A number: sign, digits with optional thousands commas, decimals, a/b. Bounded repeats keep it
# linear even on 20,000 characters of digits.
_NUMBER = re.compile(r"-?\d{1,300}(?:,\d{3}){0,100}(?:\.\d{1,300})?(?:/\d{1,300})?")
_HEDGE = re.compile(r"\s(?:or|and/or)\s", re.I)
_MAX_ANSWER = 2000


@dataclass(frozen=True)
class Extraction:
    """The answer found in a completion: ``answer`` is None when none was found."""

    answer: str | None
    source: str  # boxed | answer_tag | final_answer | gsm8k | answer_is | last_number | none
    hedged: bool = False


def boxed_contents(text: str) -> list[tuple[int, str]]:
    """Every ``\\boxed``/``\\fbox`` argument with its start offset; nested braces are kept whole.

    >>> boxed_contents(r"so \\boxed{\\frac{1}{2}} and \\boxed 7.")
    [(3, '\\\\frac{1}{2}'), (27, '7')]
    """
    out: list[tuple[int, str]] = []
    matches = list(_BOX.finditer(text))
    if not matches:
        return out
    closing = _matching_braces(text)
    for m in matches:
        i = m.end()
        if i < len(text) and text[i] == "{":
            j = closing.get(i)
            if j is not None:
                out.append((m.start(), text[i + 1 : j]))
        else:  # \boxed 7: the argument runs to whitespace, '$' or the sentence end
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in "$":
                j += 1
            arg = text[i:j].rstrip(".,;")
            if arg:
                out.append((m.start(), arg))
    return out


def _matching_braces(text: str) -> dict[int, int]:
    """Offset of each '{' -> offset of its '}', in one pass (escaped \\{ \\} are skipped), so
    thousands of unclosed boxes in garbage cost linear time, not quadratic."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    j = 0
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            stack.append(j)
        elif c == "}" and stack:
            pairs[stack.pop()] = j
        j += 1
    return pairs


def _clean(ans: str) -> str:
    ans = ans.strip()
    for _ in range(2):  # "$x$." and "\\(x\\)" wrappers
        ans = ans.strip().rstrip(".").strip()
        if len(ans) >= 2 and ans[0] == "$" and ans[-1] == "$":
            ans = ans.strip("$")
        if ans.startswith("\\(") and ans.endswith("\\)"):
            ans = ans[2:-2]
        if ans.startswith("\\[") and ans.endswith("\\]"):
            ans = ans[2:-2]
    return ans.strip()


def _from_boxes(text: str) -> Extraction | None:
    boxes = boxed_contents(text)
    if not boxes:
        return None
    last_pos, last = boxes[-1]
    # The final sentence: boxes after the last sentence break that precedes the last box.
    start = max(text.rfind("\n", 0, last_pos), text.rfind(". ", 0, last_pos))
    in_sentence = {_clean(b) for pos, b in boxes if pos > start}
    hedged = len(in_sentence) > 1 or bool(_HEDGE.search(f" {last} "))
    return Extraction(_clean(last), "boxed", hedged)


def _after(pattern: re.Pattern[str], text: str) -> tuple[int, str] | None:
    """(end offset of the last match, the clause after it)."""
    last = None
    for m in pattern.finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end() :]
    line = rest.strip().split("\n", 1)[0]
    # "The answer is 12 because ..." keeps only the first clause of the sentence.
    line = re.split(r"(?<=[^\d\s])\.\s|\.$|\.\s+(?=[A-Z])", line, maxsplit=1)[0]
    ans = _clean(line)
    return (last.end(), ans) if ans else None


def _last_number(text: str) -> str | None:
    last = None
    for m in _NUMBER.finditer(text):
        last = m
    return last.group(0) if last else None


def _extract_plain(text: str, fallback: bool) -> Extraction | None:
    # rfind, not a lazy regex: a regex scan from every unclosed <answer> is quadratic.
    close = text.rfind("</answer>")
    open_ = text.rfind("<answer>", 0, close) if close >= 0 else -1
    if open_ >= 0:
        inner = text[open_ + len("<answer>") : close]
        boxed = _from_boxes(inner)
        if boxed is not None:
            return Extraction(boxed.answer, "answer_tag", boxed.hedged)
        ans = _clean(inner)
        return Extraction(ans, "answer_tag", bool(_HEDGE.search(f" {ans} "))) if ans else None
    boxed = _from_boxes(text)
    if boxed is not None:
        return boxed
    # "Final Answer: The final answer is $x$" holds both phrases: the later one wins.
    best: tuple[int, str, str] | None = None
    for source, pattern in (("final_answer", _FINAL), ("answer_is", _THE_ANSWER_IS)):
        found = _after(pattern, text)
        if found is not None and (best is None or found[0] > best[0]):
            best = (found[0], found[1], source)
    if best is not None:
        return Extraction(best[1], best[2], bool(_HEDGE.search(f" {best[1]} ")))
    gsm = list(_GSM8K.finditer(text))
    if gsm:
        return Extraction(_clean(gsm[-1].group(1)), "gsm8k")
    if fallback:
        num = _last_number(text)
        if num is not None:
            return Extraction(num, "last_number")
    return None


def extract_answer(completion: str, last_number_fallback: bool = True) -> Extraction:
    """The final answer of a completion.

    >>> extract_answer(r"<think>maybe \\boxed{4}</think> The answer is $\\boxed{5}$.").answer
    '5'
    >>> extract_answer("Natalia sold 48 + 24 = 72 clips.\\n#### 72").answer
    '72'
    >>> extract_answer(r"It is \\boxed{3} or \\boxed{5}.").hedged
    True
    >>> extract_answer("no digits here").source
    'none'
    """
    text = completion
    head, sep, tail = text.rpartition("</think>")
    if sep:
        # A boxed guess while thinking does not count when an answer follows the thinking.
        found = _extract_plain(tail, last_number_fallback)
        if found is None:
            found = _extract_plain(head, last_number_fallback)
    else:
        found = _extract_plain(text, last_number_fallback)
    if found is None or not found.answer:
        return Extraction(None, "none")
    if len(found.answer) > _MAX_ANSWER:
        return Extraction(found.answer[:_MAX_ANSWER], found.source, found.hedged)
    return found
