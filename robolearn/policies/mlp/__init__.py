"""Behaviour-cloning baseline: an MLP that regresses the whole action chunk."""

from robolearn.policies.mlp.model import MLPConfig, MLPPolicy

__all__ = ["MLPConfig", "MLPPolicy"]
