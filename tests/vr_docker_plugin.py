"""Docker test support (owned by the sandbox work): the `docker` marker's skip logic.

Docker-marked tests skip ONLY when no engine can be started (the plugin tries: it runs the
same bring-up as ``make sandbox``, building the image when missing), and then the terminal
summary says so loudly. Shared session fixtures: one warm Docker pool, one process sandbox.
"""

from __future__ import annotations

import pytest

_state: dict[str, object] = {"checked": False, "error": None, "skipped": 0}


def _docker_error() -> str | None:
    """None when the engine runs and the image exists (bringing both up if needed)."""
    if not _state["checked"]:
        _state["checked"] = True
        try:
            from verirl.sandboxes.engine import ensure_up

            ensure_up(build=True)
        except Exception as e:
            _state["error"] = f"{type(e).__name__}: {e}"
    err = _state["error"]
    return None if err is None else str(err)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    docker_items = [it for it in items if it.get_closest_marker("docker")]
    if not docker_items:
        return
    err = _docker_error()
    if err is None:
        return
    mark = pytest.mark.skip(reason=f"NO DOCKER ENGINE: {err}")
    for it in docker_items:
        it.add_marker(mark)
    _state["skipped"] = len(docker_items)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if not _state["skipped"]:
        return
    tr = terminalreporter
    tr.write_sep("!", "DOCKER SANDBOX TESTS SKIPPED", red=True, bold=True)
    tr.write_line(
        f"{_state['skipped']} docker-marked tests did NOT run: no Docker engine could be started",
        red=True,
        bold=True,
    )
    tr.write_line(f"reason: {_state['error']}", red=True)
    tr.write_line("fix: run `python -m verirl.sandboxes.engine up` as root", red=True)
    tr.write_sep("!", red=True, bold=True)


@pytest.fixture(scope="session")
def docker_pool():
    """One warm pool for the whole session (2 containers)."""
    from verirl.sandboxes.docker_pool import DockerPool

    pool = DockerPool(workers=2, batch_size=16)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def process_sandbox():
    from verirl.sandboxes.process import ProcessSandbox

    sb = ProcessSandbox(workers=2, batch_size=16)
    yield sb
    sb.close()
