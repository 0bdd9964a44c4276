"""The ``ase`` labelling engine: one ``trainspot.ase.label`` job labels the whole dataset."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiida_trainspot.common.engines import EngineError

from ..engine import LabellingEngine
from .calculation import AseLabelCalculation

OUTPUTS = ('labelled', 'failed', 'summary')


class AseEngine(LabellingEngine):
    """Label every frame with an ASE calculator (EMT, LJ, Tersoff, any ``module:Class``)."""

    @classmethod
    def define(cls, spec: Any, namespace: str) -> None:
        """The job's inputs (code, calculator, parameter file, options) under ``namespace``."""
        spec.expose_inputs(
            AseLabelCalculation,
            namespace=namespace,
            exclude=('dataset',),
            namespace_options={
                'required': False,
                'populate_defaults': False,
                'help': 'Inputs of the `ase` engine.',
            },
        )

    @classmethod
    def validate(cls, inputs: Mapping[str, Any], stage_inputs: Mapping[str, Any]) -> str | None:
        """A code and a calculator (the job checks the calculator itself)."""
        missing = [port for port in ('code', 'calculator') if port not in inputs]
        if missing:
            return f'ase: the ase engine needs {", ".join("ase." + p for p in missing)}'
        return None

    def prepare(self, dataset) -> list[str]:
        """One job for every frame."""
        self.state['dataset'] = dataset
        return ['0']

    def submit(self, key: str) -> Any:
        """The labelling job of the whole dataset."""
        inputs = self.process.exposed_inputs(AseLabelCalculation, namespace=self.name)
        inputs['dataset'] = self.state['dataset']
        return self.process.submit(AseLabelCalculation, **inputs)

    def collect(self, finished: Mapping[str, Any]) -> dict[str, Any]:
        """The job's outputs; a job that produced none failed as a whole."""
        job = finished['0']
        if not all(name in job.outputs for name in OUTPUTS):
            raise EngineError(job.exit_message or f'exit status {job.exit_status}')
        return {name: job.outputs[name] for name in OUTPUTS}
