"""Simulated tasks: a scene, a seeded initial state, a success check and a scripted expert each.

`TASKS` names every task; `make_task("pick_place")` builds one with an optional `TaskConfig`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.tasks.base import Task, TaskConfig

# name -> "module:Class", imported on demand so that importing one task stays cheap
TASKS = {
    "reach": "sim.tasks.reach:Reach",
    "push_cube": "sim.tasks.push_cube:PushCube",
    "pick_place": "sim.tasks.pick_place:PickPlace",
    "stack": "sim.tasks.stack:Stack",
    "push_t": "sim.tasks.push_t:PushT",
}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(import_module(module), cls)


def make_task(name: str, config: TaskConfig | None = None) -> Task:
    return task_class(name)(config)
