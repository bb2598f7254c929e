"""Tiny-model fixtures shared by trainer, rollout and eval tests (built offline, once a session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~0.3 M-parameter random Qwen2 (head_dim 32) with the byte-level tokenizer."""
    from verirl.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-model"),
        hidden_size=64,
        num_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
        seed=0,
    )
