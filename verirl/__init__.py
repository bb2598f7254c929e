"""verirl: reinforcement learning from verifiable rewards for reasoning language models.

Importing ``verirl`` is cheap by design (no torch, no vLLM): the CLI's ``envs`` commands and the
math reward must start in well under a second. Heavy parts live in ``verirl.train``,
``verirl.rollout`` and ``verirl.algos`` and are imported only where used.
"""

__version__ = "0.1.0"
