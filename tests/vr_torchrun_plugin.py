"""The 2-rank launch of ``vr_torchrun_worker`` as a session fixture: the ``test_distributed_*``
files share its results, since torchrun's start-up dominates on CPU (one launch, not one per
file)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def two_ranks(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every 2-rank check of ``vr_torchrun_worker.worker`` wrote its results to."""
    from vr_torchrun_worker import launch

    out = tmp_path_factory.mktemp("dist")
    launch(tiny_model_dir, out, "core")
    return out
