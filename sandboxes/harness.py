"""The test harness of a function job (stdlib only; forked from the runner inside the sandbox).

It runs as the judge uid, never the sample's: the solution process (another uid, a freshly
exec'd interpreter, see `verirl.sandboxes.solution`) can neither signal it, nor ptrace it, nor
read its memory or ``/proc/<pid>/{mem,fd,environ}``; it is also non-dumpable and holds no
capability. It runs only trusted code: the prelude (the HumanEval prompt, whose helpers the
test sees) and the test, whose ``check(candidate)`` calls the solution over a pair of pipes.
Arguments and replies cross as plain data (exact builtin types, `solution.encode`), so every
value the test sees from the candidate is an honest builtin: ``==``, ``type(x) == int``,
``isinstance`` and ``is None`` in the test mean what they mean in Python.

Every ``assert`` is rewritten to count itself (and compare with a readable failure detail);
the report says how many assertions ran and held, so a test that ran none did not pass. An
exception the candidate raised is re-raised in the harness as the same builtin ``Exception``
type (a test may expect ValueError), except StopIteration/StopAsyncIteration, which become
RuntimeError (PEP 479): raised inside a test's ``map`` or generator they would otherwise end
the test loop early, silently. ``SystemExit`` and other BaseExceptions become RuntimeError.
"""

import ast
import builtins
import json
import os

try:  # on the host (doctests, type checks); inside the sandbox the runner provides them
    from verirl.sandboxes.solution import NotPlain, decode, encode, frame, read_message
except ImportError:
    pass

_OPS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}
_LOOP_ENDERS = ("StopIteration", "StopAsyncIteration")


class _AssertRewriter(ast.NodeTransformer):
    """``assert L op R`` -> ``__vr_cmp(i, op, L, R)``; any other ``assert E`` ->
    ``__vr_truth(i, E)``. Evaluation order and semantics are Python's; the calls count."""

    def __init__(self):
        self.count = 0

    def visit_Assert(self, node):
        i = self.count
        self.count += 1
        t = node.test
        if isinstance(t, ast.Compare) and len(t.ops) == 1 and type(t.ops[0]) in _OPS:
            args = [ast.Constant(i), ast.Constant(_OPS[type(t.ops[0])]), t.left, t.comparators[0]]
            call = ast.Call(ast.Name("__vr_cmp", ast.Load()), args, [])
        else:
            call = ast.Call(ast.Name("__vr_truth", ast.Load()), [ast.Constant(i), t], [])
        return ast.copy_location(ast.Expr(call), node)


def rewrite_test(test):
    """(code object, number of assert statements in the source).

    >>> rewrite_test("def check(c):\\n    assert c(1) == 2\\n    assert c(2)\\n")[1]
    2
    """
    rw = _AssertRewriter()
    tree = rw.visit(ast.parse(test, "<test>"))
    return compile(ast.fix_missing_locations(tree), "<test>", "exec"), rw.count


def compare(op, a, b):
    """Python's own comparison (the operands are trusted values or plain copies).

    >>> compare("==", type(3), int), compare("is", None, None), compare("in", 2, [1, 2])
    (True, True, True)
    """
    if op == "==":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    if op == ">=":
        return bool(a >= b)
    if op == "in":
        return a in b
    if op == "not in":
        return a not in b
    if op == "is":
        return a is b
    return a is not b


def short(v, n=120):
    """A bounded repr that never raises (ints past repr's digit limit, cycles, huge lists).

    >>> short(10**5000), short("x" * 200, 10)
    ('<int of 5001 digits>', "'xxxxxx...")
    """
    if type(v) is int and v.bit_length() > 4000:
        return f"<int of {len(format(v, 'x')) * 1233 // 1024 + 1} digits>"
    try:
        s = repr(v)
    except Exception:
        return f"<{type(v).__name__}>"
    return s if len(s) <= n else s[: n - 3] + "..."


class _SolutionGone(BaseException):
    """The solution process exited, was killed, or answered garbage."""


class _SolutionMemory(BaseException):
    """The solution process ran out of memory (MemoryError there)."""


def _raise_reply(msg):
    name = str(msg[1]) if len(msg) > 1 else "?"
    text = str(msg[2]) if len(msg) > 2 else ""
    if name == "MemoryError":
        raise _SolutionMemory(text)
    exc = builtins.__dict__.get(name)
    if isinstance(exc, type) and issubclass(exc, Exception) and name not in _LOOP_ENDERS:
        try:
            err = exc(text)
        except Exception:
            err = RuntimeError(f"{name}: {text}")
    else:
        err = RuntimeError(f"candidate raised {name}: {text}")
    raise err


def run_harness(job, req_w, resp_r, report_fd):
    """Run the test against the solution process; write one report line, then return.

    The report is ``<nonce>:<json [kind, detail, asserts_held, asserts_in_source]>``; kinds:
    done, failed (an assertion was false), raised, memory, notplain, compile_error,
    missing_entry, test_error (the test itself is broken: infra)."""
    held = [0]
    nonce = job["nonce"]

    def report(kind, detail, n_source=0):
        line = nonce + ":" + json.dumps([kind, str(detail)[:2000], held[0], n_source]) + "\n"
        data = line.encode("utf-8", "surrogatepass")
        while data:
            data = data[os.write(report_fd, data) :]

    def vr_cmp(i, op, left, right):
        if not compare(op, left, right):
            raise AssertionError(f"assert #{i} failed: {short(left)} {op} {short(right)} is false")
        held[0] += 1

    def vr_truth(i, value):
        if not value:
            raise AssertionError(f"assert #{i} failed: {short(value)} is false")
        held[0] += 1

    try:
        test_code, n_source = rewrite_test(job["test"])
    except (SyntaxError, ValueError) as e:
        report("test_error", f"test does not compile: {e}")
        return
    replies = os.fdopen(resp_r, "rb")
    requests = os.fdopen(req_w, "wb")

    def call(payload):
        requests.write(frame(payload))
        requests.flush()
        raw = read_message(replies)
        if not raw:
            raise _SolutionGone("the solution process exited or was killed")
        try:
            msg = decode(raw)
        except (ValueError, TypeError, IndexError, MemoryError, UnicodeDecodeError):
            raise _SolutionGone("malformed reply from the solution process") from None
        if type(msg) is not tuple or not msg or type(msg[0]) is not str:
            raise _SolutionGone("malformed reply from the solution process")
        return msg

    def candidate(*args, **kwargs):
        try:
            payload = encode((args, kwargs))
        except NotPlain as e:
            raise TypeError(f"argument is not plain data: {e}") from None
        msg = call(payload)
        if msg[0] == "ok" and len(msg) == 2:
            return msg[1]
        if msg[0] == "notplain":
            raise NotPlain(str(msg[1]) if len(msg) > 1 else "?")
        if msg[0] == "raised":
            _raise_reply(msg)
        raise _SolutionGone("malformed reply from the solution process")

    # The test sees the helpers of the trusted prelude (the prompt: HumanEval/32's poly).
    test_ns = {"__name__": "prelude", "__builtins__": dict(builtins.__dict__)}
    if job.get("prelude"):
        try:
            exec(compile(job["prelude"], "<prelude>", "exec"), test_ns)
        except BaseException:
            test_ns = {"__name__": "prelude", "__builtins__": dict(builtins.__dict__)}
    phase = "solution"
    try:
        raw = read_message(replies)
        msg = decode(raw) if raw else ("gone",)
        if msg[0] in ("compile_error", "missing_entry"):
            report(msg[0], msg[1] if len(msg) > 1 else "")
            return
        if msg[0] == "raised":
            _raise_reply(msg)
        if msg[0] == "gone":
            raise _SolutionGone("the solution process exited or was killed")
        if msg[0] != "ready":
            raise _SolutionGone("malformed reply from the solution process")
        test_ns.update(__vr_cmp=vr_cmp, __vr_truth=vr_truth)
        test_ns[job["entry_point"]] = candidate  # tests may call it by name (HumanEval/33)
        phase = "test"
        exec(test_code, test_ns)
        test_ns["check"](candidate)
    except NotPlain as e:
        report("notplain", f"candidate returned a non-plain {e}", n_source)
    except (MemoryError, _SolutionMemory):
        report("memory", f"MemoryError in {phase}", n_source)
    except _SolutionGone as e:
        report("raised", f"solution: {e}", n_source)
    except AssertionError as e:
        report("failed", str(e) or "assertion failed", n_source)
    except BaseException as e:  # SystemExit included: exiting early is not passing
        report("raised", f"{phase}: {type(e).__name__}: {str(e)[:500]}", n_source)
    else:
        report("done", f"{held[0]} assertions held", n_source)
