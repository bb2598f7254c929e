"""Find the final answer in a model's completion.

Precedence: the first rule that finds an answer wins.

1. **Thinking.** With ``</think>``, only the text after the last one is searched; the thinking
   text is searched only when that tail holds no answer at all.
2. **Answer tag.** The last ``<answer>…</answer>``; inside it rules 3–5 apply, else its whole
   content is the answer.
3. **Boxes.** ``\\boxed{…}``/``\\fbox{…}`` of the final sentence that holds one. With several boxes
   there, a correction between two of them ("but actually", "wait", "instead", "I mean",
   "correction", "rather") drops the earlier ones; boxes that still differ form one list answer
   (``1, 2``) when only commas, "and" or spaces join them, and a hedge ("3 or 5") otherwise.
4. **Answer phrases**, the one latest in the text: "Final Answer:" (also bold,
   ``**Final Answer:**``/``**Final Answer**:``), "the/my/final answer is", "Answer:", GSM8K's
   ``#### n``. The answer is the phrase's value, not its clause: the first sentence after it,
   cut after its last copula ("The largest $n$ is 34." → ``34``), reduced to its math span when
   one span holds the value ("$\\frac12$ cups" → ``\\frac12``).
5. **Last math span**: the last ``$…$``/``$$…$$``/``\\(…\\)``/``\\[…\\]`` that is not a bare name
   (``$n$``, ``$\\alpha$``); of a chain ``a = b = c`` its last side.
6. **Last bare number** (when enabled), only when it stands alone: a number that touches
   ``{ } ^ _ / \\``, an operator or a letter is a fragment of a larger expression, and then
   nothing is extracted (``\\frac{1}{3}`` gives no answer, never ``3``).

Hedges score as wrong, not as the better of two guesses (a reward that accepts "3 or 5" teaches
the model to list candidates): an answer containing " or " (whichever rule found it), or rule 3's
hedge, is ``hedged``; `is_hedge` is that one check, shared with the envs that score by other rules.

Every scan here is linear in the text (no backtracking regexes over unbounded input), so the
extraction runs in the caller's process; only the sympy comparison needs a worker with a
deadline.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

_BOX = re.compile(r"\\(?:boxed|fbox)\b\s*")
# Each phrase ends where its value starts; bold markers around it are part of the phrase.
_FINAL = re.compile(r"\**final\s+answer\s*(?:is)?\s*\**\s*[:：]\s*\**", re.I)
_THE_ANSWER_IS = re.compile(r"(?:the|my|final)\s+answer\s+is\s*\**\s*[:：]?\s*\**", re.I)
_ANSWER_COLON = re.compile(r"(?<![A-Za-z])\**answer\s*\**\s*[:：]\s*\**", re.I)
_GSM8K = re.compile(r"####\s*([^\n]{0,200})")
# A number: sign, digits with optional thousands commas, decimals, a/b. Bounded repeats keep it
# linear even on 20,000 characters of digits.
_NUMBER = re.compile(r"-?\d{1,300}(?:,\d{3}){0,100}(?:\.\d{1,300})?(?:/\d{1,300})?")
_HEDGE = re.compile(r"\s(?:or|and/or)\s", re.I)
_CORRECTION = re.compile(
    r"\b(?:actually|wait|instead|correction|rather|i mean|oops|mistake)\b|\bno,", re.I
)
_LIST_JOIN = re.compile(r"[\s,;$]*(?:(?:and|&)[\s,;$]*)?")
_COPULA = re.compile(r"\s(?:is|are|was|were|equals|be)\s", re.I)
_SENTENCE_END = re.compile(r"(?<=[^\d\s])\.\s|\.$|\.\s+(?=[A-Z])")
_BARE_NAME = re.compile(r"\s*(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]\}?)?\s*")
# Operators and TeX syntax that make a number part of a larger expression when they are its
# nearest neighbours.
_GLUE = set("{}^_/\\*+×·")
_TEX_COMMAND_END = re.compile(r"\\[A-Za-z]{1,30}$")
_TEX_SPACE_END = re.compile(r"(?:\\[;:,! ]|\\q?quad|~|\s){1,50}$")
_OR_END = re.compile(r"\b(?:or|and/or)$", re.I)
_MAX_ANSWER = 2000


@dataclass(frozen=True)
class Extraction:
    """The answer found in a completion: ``answer`` is None when none was found."""

    answer: str | None
    source: str  # boxed | answer_tag | final_answer | answer_is | gsm8k | math_span | last_number | none
    hedged: bool = False


def boxed_contents(text: str) -> list[tuple[int, str]]:
    """Every ``\\boxed``/``\\fbox`` argument with its start offset; nested braces are kept whole.

    >>> boxed_contents(r"so \\boxed{\\frac{1}{2}} and \\boxed 7.")
    [(3, '\\\\frac{1}{2}'), (27, '7')]
    """
    return [(pos, arg) for pos, _end, arg in _boxes(text)]


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, argument) of every box."""
    out: list[tuple[int, int, str]] = []
    matches = list(_BOX.finditer(text))
    if not matches:
        return out
    closing = _matching_braces(text)
    for m in matches:
        i = m.end()
        if i < len(text) and text[i] == "{":
            j = closing.get(i)
            if j is not None:
                out.append((m.start(), j + 1, text[i + 1 : j]))
        else:  # \boxed 7: the argument runs to whitespace, '$' or the sentence end
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in "$":
                j += 1
            arg = text[i:j].rstrip(".,;")
            if arg:
                out.append((m.start(), j, arg))
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
    for _ in range(2):  # "$x$." and "\\(x\\)" wrappers, "**12**" bold
        ans = ans.strip().strip("*").rstrip(".").strip()
        if len(ans) >= 2 and ans[0] == "$" and ans[-1] == "$":
            ans = ans.strip("$")
        if ans.startswith("\\(") and ans.endswith("\\)"):
            ans = ans[2:-2]
        if ans.startswith("\\[") and ans.endswith("\\]"):
            ans = ans[2:-2]
    return ans.strip()


def final_boxes(text: str) -> tuple[str, bool] | None:
    """(answer, hedged) from the boxes of the final sentence that has any (rule 3).

    >>> final_boxes(r"first \\boxed{3}, but actually \\boxed{5}")
    ('5', False)
    >>> final_boxes(r"\\boxed{1}\\boxed{2}"), final_boxes(r"\\boxed{3} or \\boxed{5}")
    (('1, 2', False), ('5', True))
    """
    boxes = _boxes(text)
    if not boxes:
        return None
    last_pos = boxes[-1][0]
    start = max(text.rfind("\n", 0, last_pos), text.rfind(". ", 0, last_pos))
    group = [b for b in boxes if b[0] > start]
    kept = [group[0]]
    for prev, box in itertools.pairwise(group):
        between = text[prev[1] : box[0]]
        if _CORRECTION.search(between):
            kept = [box]  # "first X, but actually Y": only Y stands
        else:
            kept.append(box)
    values = [_clean(arg) for _, _, arg in kept]
    distinct = list(dict.fromkeys(values))
    last = values[-1]
    if len(distinct) == 1:
        return last, is_hedge(last)
    joins = [text[a[1] : b[0]] for a, b in itertools.pairwise(kept)]
    if all(_LIST_JOIN.fullmatch(j) for j in joins):
        return ", ".join(distinct), False
    return last, True


def _phrase_value(clause: str) -> str:
    """The value an answer phrase names: "The largest $n$ is 34" → "34"."""
    spans = math_spans(clause)
    outside = _mask_spans(clause, spans)
    cut = None
    for m in _COPULA.finditer(outside):
        cut = m.end()
    if cut is not None:
        clause = clause[cut:]
        spans = math_spans(clause)
        outside = _mask_spans(clause, spans)
    if len(spans) == 1 and not _NUMBER.search(outside):
        return spans[0][2].strip()  # "$\frac{1}{2}$ cups": the span holds the value
    return _clean(clause)


def _after(pattern: re.Pattern[str], text: str) -> tuple[int, str] | None:
    """(end offset of the last match, the value of the sentence after it)."""
    last = None
    for m in pattern.finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end() :]
    line = rest.strip().split("\n", 1)[0]
    line = _SENTENCE_END.split(line, maxsplit=1)[0]
    ans = _clean(_phrase_value(line))
    return (last.end(), ans) if ans else None


def math_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, inner text) of every ``$…$``, ``$$…$$``, ``\\(…\\)`` and ``\\[…\\]``, in one
    left-to-right scan; an escaped ``\\$`` (currency) opens nothing.

    >>> [s[2] for s in math_spans(r"so $x=1$ and \\(y\\) cost \\$5")]
    ['x=1', 'y']
    """
    out: list[tuple[int, int, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "([":
            close = "\\)" if text[i + 1] == "(" else "\\]"
            j = text.find(close, i + 2)
            if j < 0:
                break
            out.append((i, j + 2, text[i + 2 : j]))
            i = j + 2
        elif c == "\\":
            i += 2
        elif c == "$":
            delim = "$$" if text.startswith("$$", i) else "$"
            j = i + len(delim)
            while True:
                j = text.find(delim, j)
                if j < 0 or text[j - 1] != "\\":
                    break
                j += 1
            if j < 0:
                break
            out.append((i, j + len(delim), text[i + len(delim) : j]))
            i = j + len(delim)
        else:
            i += 1
    return out


def _mask_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with every math span blanked, so phrase rules never look inside math."""
    chars = list(text)
    for a, b, _ in spans:
        chars[a:b] = " " * (b - a)
    return "".join(chars)


def _last_math_span(text: str) -> str | None:
    for _, _, inner in reversed(math_spans(text)):
        if not inner.strip() or _BARE_NAME.fullmatch(inner):
            continue  # "$n$" names a quantity, it is not a value
        return inner.rsplit("=", 1)[-1].strip() if "=" in inner else inner.strip()
    return None


def _last_number(text: str) -> str | None:
    """The last number, unless it is glued to a larger expression (then None: a fragment is
    never an answer)."""
    last = None
    for m in _NUMBER.finditer(text):
        last = m
    if last is None:
        return None
    start, end = last.start(), last.end()
    glued_before = text[start - 1 : start]
    glued_after = text[end : end + 1]
    if glued_before.isalnum() or glued_after.isalpha() or glued_before == "\\":
        return None  # "x2", "3x": glued to a name
    if glued_after == "." and text[end + 1 : end + 2].isdigit():
        return None
    # the nearest characters that are not spaces: "1 / 0" glues 0 to the division
    head, tail = _TEX_SPACE_END.sub("", text[:start]), text[end:].lstrip()
    before, after = head[-1:] or " ", tail[:1] or " "
    if before in _GLUE or after in _GLUE or after in "-(" or before.isdigit() or after.isdigit():
        return None  # an operand, or "2 3" (two numbers side by side, not the answer 3)
    if before == "," and head[:-1].rstrip()[-1:].isdigit():
        return None  # the last item of a list "1, 2, 3" is not the answer 3
    if before == "(" and head[-2:-1].isalpha():
        return None  # \log(0), f(3): a function's argument
    if before == "=" and head[:-1].rstrip().endswith(last.group(0)):
        return None  # "0 = 0" is an identity, not the answer 0
    if _TEX_COMMAND_END.search(head) or _OR_END.search(head):
        return None  # \ln 0, \cdot 0, \pm 1: an operand; "0 or 1": a hedge
    return last.group(0)


def _extract_plain(text: str, fallback: bool, in_tag: bool = False) -> Extraction | None:
    if not in_tag:
        # rfind, not a lazy regex: a regex scan from every unclosed <answer> is quadratic.
        close = text.rfind("</answer>")
        open_ = text.rfind("<answer>", 0, close) if close >= 0 else -1
        if open_ >= 0:
            inner = text[open_ + len("<answer>") : close]
            found = _extract_plain(inner, False, in_tag=True)
            if found is not None and found.source != "math_span":
                return Extraction(found.answer, "answer_tag", found.hedged)
            ans = _clean(inner)
            return Extraction(ans, "answer_tag") if ans else None
    boxed = final_boxes(text)
    if boxed is not None:
        return Extraction(boxed[0], "boxed", boxed[1])
    # "Final Answer: The final answer is $x$" holds both phrases: the later one wins.
    best: tuple[int, str, str] | None = None
    phrases = (
        ("final_answer", _FINAL),
        ("answer_is", _THE_ANSWER_IS),
        ("answer_is", _ANSWER_COLON),
    )
    for source, pattern in phrases:
        hit = _after(pattern, text)
        if hit is not None and (best is None or hit[0] > best[0]):
            best = (hit[0], hit[1], source)
    if best is not None:
        return Extraction(best[1], best[2])
    gsm = list(_GSM8K.finditer(text))
    if gsm:
        return Extraction(_clean(gsm[-1].group(1)), "gsm8k")
    if in_tag:
        return None
    span = _last_math_span(text)
    if span:
        return Extraction(span, "math_span")
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
    >>> extract_answer(r"It is \\boxed{3} or \\boxed{5}.").hedged, extract_answer("#### 3 or 5").hedged
    (True, True)
    >>> extract_answer("**Final Answer:** The largest $n$ is 34.").answer
    '34'
    >>> extract_answer(r"so it is \\frac{1}{3}").source
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
    # One hedge check for every rule: a rule that skipped it (GSM8K's "#### 3 or 5" did) let a
    # listed alternative through.
    hedged = found.hedged or is_hedge(found.answer)
    return Extraction(found.answer[:_MAX_ANSWER], found.source, hedged)


def is_hedge(answer: str) -> bool:
    """Does an extracted answer offer alternatives ("3 or 5", "3 \\text{ or } 5")?

    >>> is_hedge("3 or 5"), is_hedge(r"(B) \\text{ or } 3"), is_hedge("order 5")
    (True, True, False)
    """
    return bool(_HEDGE.search(f" {answer} "))
