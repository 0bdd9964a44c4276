"""The exploration engine contract: a plan of MD runs in, sampled frames out.

The stage (:class:`~aiida_trainspot.exploration.workchain.ExplorationWorkChain`) draws the plan
with the seed, whatever the engine: which committee member drives the MD, which starting frame,
temperature, pressure and seed each run gets. An exploration engine (registered under the entry
point group ``trainspot.exploration.engines``) turns that plan into processes and finished
processes into frames:

- :meth:`ExplorationEngine.prepare`: the plan -> the keys of the processes to run (one per run,
  or consecutive runs per job: the engine decides);
- :meth:`ExplorationEngine.submit`: one key -> a submitted process;
- :meth:`ExplorationEngine.collect`: the finished processes by key -> :class:`Collected`: per
  process that produced frames, its ``trajectory`` (a PESData with the MD metadata columns of
  :data:`aiida_trainspot.exploration.md.METADATA_COLUMNS`) and ``summary``, and a failure
  record (:func:`job_failure`) per process that failed. The stage joins them in key order.

What a run is (the plan, the seeds, the member, the parsed protocol) is read from the stage
through the properties of :class:`ExplorationEngine`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiida_trainspot.common.engines import Engine

from .plan import ExplorationProtocol


@dataclass
class Collected:
    """What an engine returns from its finished processes.

    ``parts``: key -> (trajectory PESData, summary Dict) of each process that produced frames;
    ``sources``: key -> the pool index of each starting frame of that process, when its
    ``source_frame`` column counts from 0 within the process (None: already pool indices);
    ``failures``: key -> :func:`job_failure` of each process that did not finish ok.
    """

    parts: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    sources: dict[str, list[int]] = field(default_factory=dict)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)


def job_failure(node: Any) -> dict[str, Any]:
    """The record of a failed process the stage reports: pk, exit status and message."""
    return {'pk': node.pk, 'exit_status': node.exit_status, 'message': node.exit_message}


class ExplorationEngine(Engine):
    """Base of exploration engines (see the module docstring for the contract)."""

    @classmethod
    def validate(  # type: ignore[override]
        cls, inputs: Mapping[str, Any], stage_inputs: Mapping[str, Any], has_model: bool = True
    ) -> str | None:
        """What is wrong when this engine is chosen, or None.

        ``has_model``: a potential will drive the MD (``model``, ``models``, or a wrapping
        workflow that gives the committee itself).
        """
        return None

    @property
    def plan(self) -> dict[str, list]:
        """The runs: ``frames`` (pool indices), ``temperatures`` (K), ``pressures_kbar``."""
        return self.process.ctx.plan

    @property
    def seeds(self) -> list[int]:
        """One seed per run, from the stage seed and the run index alone."""
        return self.process.ctx.seeds

    @property
    def model(self) -> Any:
        """The committee member driving the MD (None: the engine's own potential)."""
        return self.process.ctx.model

    @property
    def protocol(self) -> ExplorationProtocol:
        """The stage's MD protocol, parsed (checked at submission)."""
        return ExplorationProtocol.from_dict(self.process.inputs.protocol.get_dict())

    def options(self) -> dict[str, Any] | None:
        """The ``options`` input (metadata.options of every job), if given."""
        inputs = self.process.inputs
        return inputs.options.get_dict() if 'options' in inputs else None

    def prepare(self) -> list[str]:
        """The keys of the processes that run the plan; keep what ``submit`` needs in state."""
        raise NotImplementedError

    def submit(self, key: str) -> Any:
        """Submit the process of ``key`` (with ``self.process.submit``) and return its node."""
        raise NotImplementedError

    def collect(self, finished: Mapping[str, Any]) -> Collected:
        """The frames and failures of the finished processes."""
        raise NotImplementedError
