"""Policies: one package each (diffusion, flow, act, mlp) behind the contract in `base`."""

from robolearn.policies.base import (
    Policy,
    PolicyConfig,
    config_from_dict,
    make_config,
    make_policy,
)

__all__ = ["Policy", "PolicyConfig", "config_from_dict", "make_config", "make_policy"]
