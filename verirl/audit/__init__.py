"""``verirl audit ENV``: probe an environment's reward for hacks before training on it.

A policy under RL finds whatever its reward accepts; nobody sees that by reading a scorer. The
audit scores a battery of adversarial completions (`verirl.audit.battery`,
`verirl.audit.code_battery`) on an env's own rows through its own ``score_batch``
(`verirl.audit.runner`) and reports every completion rewarded where it cannot be right, and
every gold answer the env fails to accept (`verirl.audit.report`).
"""

from verirl.audit.battery import Probe
from verirl.audit.runner import AuditReport, Finding, audit_env

__all__ = ["AuditReport", "Finding", "Probe", "audit_env"]
