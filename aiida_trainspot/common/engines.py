"""Engines as plug-ins: how a stage finds the code that does its work.

A stage (labelling, exploration) owns what every engine shares: its ports, the throttle that
keeps at most ``max_concurrent`` processes in flight, the failure rules and the outputs. An
*engine* owns the rest: its own inputs, their checks, the processes it submits and how their
results become the stage's results. Engines are found by entry point, so a package adds one
without editing this one::

    [project.entry-points."trainspot.labelling.engines"]
    xtb = "my_package.xtb:XtbEngine"

A stage builds its spec from its group: each engine's inputs live under a namespace of the
engine's name, and the stage's ``engine`` input accepts every registered name. The contract is
a few methods (see :class:`Engine` and the stage's subclass of it), in the spirit of
aiida-quantumespresso's ``get_builder_from_protocol``: no framework, no registry to edit.

An engine object is made afresh for each step of the stage's work chain (a work chain is
saved between steps and may continue in another daemon worker), so it keeps whatever it needs
across steps in :attr:`Engine.state`, which the work chain's context stores.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, ClassVar

LABELLING_ENGINES = 'trainspot.labelling.engines'
EXPLORATION_ENGINES = 'trainspot.exploration.engines'
SELECTION_STRATEGIES = 'trainspot.selection.strategies'

#: The work chain's context key holding each engine's state.
STATE_KEY = 'engine_state'


class EngineError(Exception):
    """The engine's work failed as a whole: the stage exits with its engine-failure code."""


class EngineLoadError(ImportError):
    """An entry point of an engine group names nothing importable (a broken plug-in)."""


@functools.cache
def registered(group: str) -> dict[str, Any]:
    """Every object registered under the entry point ``group``, by name, sorted by name.

    The same name registered twice with one target (a package installed in two ways) counts
    once; with two targets it is an error, as is a target that cannot be imported: a stage
    must not silently run with a different engine than the one a user installed.
    """
    points: dict[str, Any] = {}
    for point in entry_points(group=group):
        known = points.setdefault(point.name, point)
        if known.value != point.value:
            raise EngineLoadError(
                f'{group}: {point.name!r} is registered twice, as {known.value!r} and '
                f'{point.value!r}; uninstall one of the packages'
            )
    found = {}
    for name in sorted(points):
        try:
            found[name] = points[name].load()
        except Exception as exception:
            raise EngineLoadError(
                f'{group}: {name!r} = {points[name].value!r} cannot be loaded '
                f'({type(exception).__name__}: {exception})'
            ) from exception
    return found


def engine_names(group: str) -> list[str]:
    """The names of the engines registered under ``group``."""
    return list(registered(group))


def engine_class(group: str, name: str) -> type[Engine]:
    """The engine registered as ``name`` under ``group`` (ValueError naming the choices)."""
    engines = registered(group)
    if name not in engines:
        raise ValueError(f'unknown engine {name!r}; choose one of {list(engines)}')
    return engines[name]


class Engine:
    """Base of a stage's engines: declare inputs, check them, run, collect.

    Subclasses implement the stage's methods (``prepare``, ``submit``, ``collect``: see
    :class:`aiida_trainspot.labelling.engine.LabellingEngine` and
    :class:`aiida_trainspot.exploration.engine.ExplorationEngine`) and, where they need
    inputs of their own, :meth:`define` and :meth:`validate`.
    """

    #: The name the engine is registered under (set by the stage when it makes the engine).
    name: ClassVar[str] = ''

    def __init__(self, process: Any, name: str) -> None:
        self.process = process
        self.name = name

    @classmethod
    def define(cls, spec: Any, namespace: str) -> None:
        """Declare the engine's inputs under ``namespace`` (and outputs, if it adds any).

        Called once when the stage builds its spec. Inputs should not be required: another
        engine may run; :meth:`validate` says what this engine needs when it is chosen.
        """

    @classmethod
    def validate(cls, inputs: Mapping[str, Any], stage_inputs: Mapping[str, Any]) -> str | None:
        """A message naming what is wrong with the inputs when this engine is chosen, or None.

        ``inputs``: the engine's namespace (empty when none is given); ``stage_inputs``: every
        input of the stage. Runs at submission, before anything is stored; name ports with
        their full path (``qe.pseudo_family``) so the user knows what to change.
        """
        return None

    @property
    def inputs(self) -> Mapping[str, Any]:
        """The engine's own inputs (its namespace of the stage's inputs; empty when absent)."""
        return self.process.inputs.get(self.name) or {}

    @property
    def state(self) -> dict[str, Any]:
        """What the engine keeps across steps: stored in the work chain's context.

        Values must be what a context can hold: nodes, numbers, strings, lists and dicts.
        """
        return self.process.ctx[STATE_KEY]
