"""Verifiable tasks: generator + prompt + answer + reward (+ a worked trace for SFT). One file per task.

`TASKS` is the literal registry: name -> "module:Class". `get_task(name, **config)` builds one.
"""

from __future__ import annotations

import importlib

from sherman.tasks.base import Example, Task

TASKS: dict[str, str] = {
    "arithmetic": "sherman.tasks.arithmetic:Arithmetic",
    "countdown": "sherman.tasks.countdown:Countdown",
    "kv_retrieval": "sherman.tasks.kv_retrieval:KVRetrieval",
}


def get_task(name: str, **config) -> Task:
    from sherman.core.common import ShermanError

    if name not in TASKS:
        raise ShermanError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**config)


__all__ = ["Example", "Task", "TASKS", "get_task"]
