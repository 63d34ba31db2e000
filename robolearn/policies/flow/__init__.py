"""Flow matching policy: rectified flow over action chunks, sampled in a few ODE steps."""

from robolearn.policies.flow.model import FlowConfig, FlowPolicy

__all__ = ["FlowConfig", "FlowPolicy"]
