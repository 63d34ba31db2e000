"""ACT (Zhao et al. 2023): a CVAE transformer that predicts long action chunks."""

from robolearn.policies.act.model import ACTConfig, ACTPolicy

__all__ = ["ACTConfig", "ACTPolicy"]
