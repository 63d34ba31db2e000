"""Hydra configuration: composing the packaged configs with command-line overrides, and building
robots and teleoperators from them.

The configs live in `configs/` at the repository root (record.yaml with the groups robot/,
task/, teleop/).
Commands compose them with hydra's compose API rather than `@hydra.main`, so hydra does not
change the working directory or take over logging: `dataset=datasets/x.zarr` means what it says.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robolearn.errors import RobolearnError

CONF_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(RobolearnError):
    """A configuration that cannot be composed or built."""


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The packaged config `config_name` with hydra `overrides` (key=value, group=option)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"{exc}\n(see the options with: robolearn {config_name} --help)") from exc
    return cfg


def command_flags(argv: Sequence[str]) -> tuple[list[str], bool, bool]:
    """(overrides, --help given, --cfg given) of a hydra-style command line."""
    args = list(argv)
    wants_help = any(a in ("-h", "--help") for a in args)
    show = "--cfg" in args
    return [a for a in args if a != "--cfg"], wants_help, show


def print_config(cfg: DictConfig) -> int:
    """`--cfg`: the composed config as YAML."""
    print(OmegaConf.to_yaml(cfg, resolve=True))
    return 0


def choices(group: str) -> list[str]:
    """The options of a config group (e.g. robot → sim_panda, sim_so101, …)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def build(node: DictConfig, what: str, **available: Any) -> Any:
    """Instantiate a `_target_` node, passing those of `available` its constructor takes."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, get_method, instantiate

    if "_target_" not in node:
        raise ConfigError(f"the {what} config has no _target_: {OmegaConf.to_yaml(node)}")
    target = node["_target_"]
    try:
        obj = get_class(target)
        params = inspect.signature(obj.__init__).parameters
    except Exception:  # a factory function rather than a class
        try:
            params = inspect.signature(get_method(target)).parameters
        except Exception as exc:
            raise ConfigError(
                f"{what}: cannot import {target!r} ({exc}); is its optional extra installed?"
            ) from exc
    extra = {k: v for k, v in available.items() if k in params and k not in node}
    try:
        # A partial, then the call: objects in `extra` (a robot, a FeatureSpec) reach the
        # constructor as they are; passed to instantiate() they would become config nodes.
        factory = instantiate(node, _partial_=True)
    except InstantiationException as exc:
        raise ConfigError(f"cannot build the {what} from its config: {exc}") from exc
    try:
        return factory(**extra)
    except TypeError as exc:
        raise ConfigError(f"cannot build the {what} from its config: {exc}") from exc
