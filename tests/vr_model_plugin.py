"""Tiny-model fixtures shared by trainer, rollout and eval tests."""
