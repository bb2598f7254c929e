"""The universal-answer guard: answers that must never score against any gold.

A reward hack that a policy can find is an answer that passes for many golds at once: a value
that compares equal to everything (``1/0`` → ``zoo``), a list that contains the gold, a symbol
that "simplifies" to anything, a catch-all word. `UNIVERSAL_CANDIDATES` lists such answers,
`GUARD_GOLDS` a spread of gold kinds (integers to matrices), and `ANSWER_STYLES` the three ways a
completion states its answer. Every (candidate, gold, style) triple must score 0: the test suite
runs the whole product through the math reward and every built-in environment's scorer, and
``verirl audit`` can import the same lists to check a custom reward.

No candidate here is a correct answer to any gold in `GUARD_GOLDS` (``\\infty`` is here, and no
gold is infinite; ``\\emptyset`` is here, and no gold is the empty set).
"""

from __future__ import annotations

from collections.abc import Callable

UNIVERSAL_CANDIDATES: tuple[str, ...] = (
    # division by zero and other undefined values (zoo/nan after evaluation)
    "1/0", "-1/0", "1 / 0", "0/0", r"\frac{1}{0}", r"\frac{0}{0}", r"-\frac{1}{0}", r"\dfrac{1}{0}",
    r"\frac{x}{0}", r"\frac{1}{1-1}", "1/(1-1)", r"10^{100}/0", r"0^{-1}", r"0^0", r"0^{0}",
    r"\frac{1}{0} + 5", r"5 \cdot \frac{1}{0}", r"\ln 0", r"\log 0", r"\log(0)", r"\ln(0)",
    r"\log_{1} 2", r"\log_0 5", r"\tan(\pi/2)", r"\tan\frac{\pi}{2}", r"\cot 0", r"\csc 0",
    r"\sec\frac{\pi}{2}", r"(-1)!", r"\Gamma(0)", r"\infty - \infty", r"\infty/\infty",
    r"\frac{\infty}{\infty}", r"0 \cdot \infty", r"\infty \cdot 0", r"1^{\infty}", r"\infty^0",
    # infinities (no gold below is infinite)
    r"\infty", r"-\infty", r"+\infty", r"\pm\infty", r"\sum_{n=1}^{\infty} n", r"e^{\infty}",
    r"\lim_{x \to 0} \frac{1}{x}", r"\tilde{\infty}", "oo", "zoo", "nan", "NaN", "inf",
    "infinity", "Infinity", r"\text{NaN}", r"\mathrm{NaN}",
    # empty or contentless answers
    "", " ", "{}", r"\,", r"\quad", r"\text{}", r"\text{ }", "$$", "()", "[]", r"\{\}", "(,)",
    "[,]", r"\left(\right)", "...", r"\ldots", r"\cdots", "?", "-", "+", "=", "<", ">", r"\leq",
    r"\neq", r"\approx", "&", r"\\", "^", "_", r"\%", r"\$", r"^\circ", r"\sqrt{}", r"\frac{}{}",
    # only symbols, no value
    "x", "n", "a", "k", "y", "z", "t", "x+y", "xy", r"\alpha", r"\theta", r"\lambda", "x_1",
    "f(x)", "c", "C_1", r"x \cdot 0 + y", r"\text{answer}", r"\text{the answer}", "answer",
    # identities and statements that hold for everything
    "x = x", "0 = 0", "1 = 1", "a = a", "y = y", r"x \neq x", r"\forall x", r"\forall x \in \mathbb{R}",
    r"x \in \mathbb{R}", "True", "False", "true", r"\top", r"\bot", "yes", "no",
    # words that name no value (or every value)
    "undefined", r"\text{undefined}", r"\operatorname{undefined}", "none", "None",
    "no solution", r"\text{no solution}", "DNE", r"\text{does not exist}", "N/A", "any",
    "anything", r"\text{any real number}", r"\text{all real numbers}", r"\text{all of the above}",
    r"\text{I don't know}", r"\text{see above}", r"\text{correct}", r"\checkmark",
    r"\mathbb{R}", r"\mathbb{C}", r"\mathbb{Z}", r"\mathbb{N}", r"\emptyset", r"\varnothing",
    # hedges: several values, digits juxtaposed, every choice letter
    r"\pm", r"\mp", r"\pm x", r"\pm 1", "1 2 3 4 5 6 7 8 9 0", "0 1 2 3 4 5 6 7 8 9",
    "2 3", r"2\;3", r"2\quad 3", "1, 2, 3, 4, 5, 6, 7, 8, 9, 0", "-1, 0, 1", r"0 \text{ or } 1",
    "0 or 1", r"1 \text{ and } 2", "A B C D E", "A, B, C, D, E", "(A)(B)(C)(D)(E)", "ABCDE",
    "A/B/C/D", r"\text{A or B}", r"\{0, 1, 2, \ldots\}", r"(-\infty, \infty)", r"\mathbb{R}^2",
    # degenerate structures
    r"(1/0, 1/0)", r"\{1/0\}", "1/0, 1/0", r"\begin{pmatrix} 1/0 \\ 1/0 \end{pmatrix}",
    r"\begin{pmatrix} x \\ y \end{pmatrix}", r"\begin{pmatrix}\end{pmatrix}", "x = 1/0",
    r"n = \infty", r"k = \text{undefined}", r"y = \frac{1}{0}", r"1/0 = 1/0", r"\infty = \infty",
    # astronomical values (never evaluated)
    r"9^{9^{9^{9}}}", r"10^{10^{10}}", r"100000!",
)  # fmt: skip

# Each gold is (gold string, kind); kinds are what the issue asks the guard to cover.
GUARD_GOLDS: tuple[tuple[str, str], ...] = (
    ("0", "integer"), ("1", "integer"), ("5", "integer"), ("-3", "integer"), ("34", "integer"),
    ("1000000", "integer"), ("23", "integer"), ("6", "integer"),
    (r"\frac{3}{7}", "fraction"), (r"-\frac{1}{2}", "fraction"), ("0.5", "decimal"),
    ("3.14", "decimal"), (r"\sqrt{2}", "radical"), (r"2\sqrt{3}", "radical"),
    (r"\frac{1+\sqrt{5}}{2}", "radical"), (r"-\frac{\sqrt{3}}{2}", "radical"), (r"\pi", "pi"),
    (r"\frac{\pi}{4}", "pi"), (r"2\pi", "pi"), ("e", "constant"), ("x^2+2x+1", "expression"),
    (r"\frac{x}{x+1}", "expression"), ("3x-2", "expression"), (r"(-\infty, 3]", "interval"),
    ("[2, 5)", "interval"), (r"\{1, 2\}", "set"), (r"\{-1, 3\}", "set"), ("(1, 2)", "tuple"),
    ("(3, -1, 2)", "tuple"), ("y = 2x + 1", "equation"), ("x^2 + y^2 = 25", "equation"),
    (r"x \geq 5", "inequality"), (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", "matrix"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", "matrix"), (r"\text{odd}", "text"),
    (r"\text{Monday}", "text"), ("C", "choice"), ("(B)", "choice"), (r"25\%", "percent"),
    (r"30^\circ", "degrees"), ("3+4i", "complex"), ("i", "complex"),
)  # fmt: skip

ANSWER_STYLES: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("boxed", lambda a: f"Let me work it out step by step.\nThe answer is $\\boxed{{{a}}}$."),
    ("answer_tag", lambda a: f"<think>Some reasoning.</think>\n<answer>{a}</answer>"),
    ("final_answer", lambda a: f"We are done.\nFinal Answer: {a}"),
)


def guard_completions(
    candidates: tuple[str, ...] = UNIVERSAL_CANDIDATES,
) -> list[tuple[str, str, str]]:
    """(candidate, style name, completion text) for every candidate in every style.

    >>> guard_completions(("1/0",))[0]
    ('1/0', 'boxed', 'Let me work it out step by step.\\nThe answer is $\\\\boxed{1/0}$.')
    """
    return [(c, name, style(c)) for c in candidates for name, style in ANSWER_STYLES]
