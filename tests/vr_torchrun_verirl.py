"""The `verirl` command as torchrun's worker script, with the trainer tests' toy environment
(`test-ascii-fraction`) registered: `torchrun ... vr_torchrun_verirl.py train CFG ...`."""

import sys

import vr_train_envs  # noqa: F401  registers the test environments

from verirl.cli import main

if __name__ == "__main__":
    sys.exit(main())
