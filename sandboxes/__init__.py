"""Sandboxed code execution, installed as ``verirl.sandboxes``.

The entry point is `verirl.sandboxes.sandbox` (``make_sandbox``, ``Job``, ``RunResult``), whose
docstring states what is protected against and what is not. Backends: ``docker_pool`` (a warm
pool of locked-down containers) and ``process`` (local subprocesses, weaker). ``engine`` brings
up dockerd and the offline-built image; ``runner`` is the stdlib-only program that executes
inside the sandbox. Importing this package is cheap: no docker SDK, no torch.
"""
