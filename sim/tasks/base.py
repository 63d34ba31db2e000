"""The Task contract and the domain-randomisation knobs shared by every task."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from robolearn.spec import Feature

if TYPE_CHECKING:
    from robolearn.hal import Teleoperator
    from sim.arms import SimArm
    from sim.robot import PyBulletRobot
    from sim.world import SimWorld


@dataclass
class Randomization:
    """Domain randomisation, all off by default: each knob is a relative or absolute spread."""

    colors: bool = False
    size: float = 0.0  # relative spread of object sizes (0.1 = ±10 %)
    friction: float = 0.0  # relative spread of object friction
    lighting: bool = False


@dataclass
class TaskConfig:
    control_hz: float = 10.0
    max_seconds: float = 20.0
    randomization: Randomization | None = None


class Task(ABC):
    """A scene on the table, its seeded initial state, its success check and its expert."""

    name: ClassVar[str]

    def __init__(self, config: TaskConfig | None = None) -> None:
        self.config = config or self.default_config()
        self.random = self.config.randomization or Randomization()
        self.world: SimWorld | None = None
        self.arm: SimArm | None = None

    @classmethod
    def default_config(cls) -> TaskConfig:
        """The task's own control rate and time limit when the user gives none."""
        return TaskConfig()

    @property
    def max_steps(self) -> int:
        return round(self.config.max_seconds * self.config.control_hz)

    def build(self, world: SimWorld, arm: SimArm) -> None:
        """Load the scene's objects into `world` once."""
        self.world, self.arm = world, arm
        self._build()

    @abstractmethod
    def _build(self) -> None: ...

    @abstractmethod
    def reset(self, rng: np.random.Generator) -> None:
        """Place the objects for a new episode, drawn from `rng`."""

    @abstractmethod
    def state_features(self) -> dict[str, Feature]:
        """Privileged state the task adds to observations (object poses and the like)."""

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def success(self) -> bool: ...

    def score(self) -> float:
        """How well the task is done now, 0 … 1 (1.0 on success unless the task grades it,
        like push_t's area coverage); evaluations report the best score of each episode."""
        return float(self.success())

    @abstractmethod
    def expert(self, robot: PyBulletRobot, rng: np.random.Generator) -> Teleoperator:
        """A scripted expert for this task, drawing its strategy from `rng`."""
