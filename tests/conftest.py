"""Shared test plumbing. Fixtures live in plugin modules beside this file, one per area."""

pytest_plugins = ["vr_docker_plugin", "vr_model_plugin", "vr_torchrun_plugin"]
