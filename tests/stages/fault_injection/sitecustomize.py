"""Kills the process that imports it with SIGKILL at a chosen moment of training (tests only).

Why a `sitecustomize`: the tests must kill a real `python -m stages.train` (started by `dvc repro`) at an exact
moment, without a hook in the pipeline's code. Python imports this module at start-up when its folder is on
PYTHONPATH; it patches the pipeline's modules as they are imported, so the moment is exact whatever the
machine's speed. `TEST_KILL_AT` says when:
- `checkpoint:<phase>:<epochs_done>:<batches_done>`: right after writing that checkpoint;
- `pass:<n>`: at the start of the n-th forward pass that fills the frozen-activation cache (1: the training
  images' pass at the deepest cut).
`TEST_SLEEP_AFTER_EPOCH=<seconds>` makes each epoch that long at least (a sleep after its checkpoint), for a
test that must act between epochs (stop a tracking server). Without either variable it changes nothing (dvc
itself imports it too).
"""

from __future__ import annotations

import importlib.abc
import os
import signal
import sys
from typing import Any

_AT = os.environ.get("TEST_KILL_AT", "")
_SLEEP = float(os.environ.get("TEST_SLEEP_AFTER_EPOCH", "0"))
_TARGETS = {"checkpoint": "pipeline.training.resume", "pass": "pipeline.training.features"}


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _patch(module: Any) -> None:
    kind, _, where = _AT.partition(":")
    if _SLEEP and module.__name__ == _TARGETS["checkpoint"]:
        import time

        write_and_go_on = module.write_checkpoint

        def write_then_sleep(path: Any, state: Any, arrays: Any) -> None:
            write_and_go_on(path, state, arrays)
            if state.trained and not state.batches_done:
                time.sleep(_SLEEP)

        module.write_checkpoint = write_then_sleep
    if kind == "checkpoint":
        wanted = tuple(int(part) for part in where.split(":"))
        write = module.write_checkpoint

        def write_then_die(path: Any, state: Any, arrays: Any) -> None:
            write(path, state, arrays)
            if (state.phase_index, state.epochs_done, state.batches_done) == wanted:
                _die()

        module.write_checkpoint = write_then_die
    elif kind == "pass":
        calls = {"count": 0}
        forward = module._forward_pass

        def die_in_pass(*arguments: Any, **options: Any) -> Any:
            calls["count"] += 1
            if calls["count"] == int(where):
                _die()
            return forward(*arguments, **options)

        module._forward_pass = die_in_pass


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds the target module with the other finders, and patches it once it has run."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        wanted = {_TARGETS.get(_AT.partition(":")[0])} | ({_TARGETS["checkpoint"]} if _SLEEP else set())
        if name not in wanted:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if _AT or _SLEEP:
    sys.meta_path.insert(0, _PatchOnImport())
