"""The ``ase`` exploration engine: ASE MD jobs (``trainspot.ase.md``) of consecutive runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from aiida import orm

from aiida_trainspot.data.operations import subset_dataset

from ..engine import Collected, ExplorationEngine, job_failure
from .calculation import AseMdCalculation, run_id_prefix


class AseMdEngine(ExplorationEngine):
    """MD in ASE with the member's calculator; runs wherever PyTorch runs."""

    @classmethod
    def validate(
        cls, inputs: Mapping[str, Any], stage_inputs: Mapping[str, Any], has_model: bool = True
    ) -> str | None:
        """A model (the job runs its calculator) and a ``trainspot-ase-md`` code."""
        if not has_model:
            return 'model: the ase engine needs a model (or models, one drawn at random)'
        if 'code' not in stage_inputs:
            return 'code: the ase engine needs a code (the trainspot-ase-md executable)'
        return None

    def prepare(self) -> list[str]:
        """Split the runs into at most ``max_concurrent`` jobs of consecutive runs.

        Each job runs its frames in turn; every run carries its own seed and id, and consecutive
        runs per job keep the joined trajectory in run order: neither the frames nor their order
        depend on ``max_concurrent``. Run ids are ``<prefix>-<run>``, the prefix a digest of the
        member, the pool, the protocol and the seed (the same inputs give the same ids).
        """
        inputs = self.process.inputs
        n_runs = len(self.plan['frames'])
        n_jobs = min(inputs.max_concurrent.value, n_runs)
        chunks = np.array_split(np.arange(n_runs), n_jobs)
        self.state['jobs'] = {str(j): [int(r) for r in chunk] for j, chunk in enumerate(chunks)}
        self.state['run_id_prefix'] = run_id_prefix(
            {
                'model': self.model,
                'structures': inputs.structures,
                'protocol': inputs.protocol.get_dict(),
                'seed': inputs.seed.value,
            }
        )
        return list(self.state['jobs'])

    def submit(self, key: str) -> Any:
        """One job of the runs of ``key``, each with its own seed and run id."""
        inputs = self.process.inputs
        runs = self.state['jobs'][key]
        plan = self.plan
        frames = subset_dataset(inputs.structures, orm.List([plan['frames'][r] for r in runs]))
        parameters = self.protocol.job_parameters(
            [plan['temperatures'][r] for r in runs],
            [plan['pressures_kbar'][r] for r in runs],
            seeds=[self.seeds[r] for r in runs],
            run_ids=[f'{self.state["run_id_prefix"]}-{r}' for r in runs],
        )
        job = {
            'code': inputs.code,
            'model': self.model,
            'structures': frames,
            'parameters': orm.Dict(parameters),
            'device': inputs.device,
            'metadata': {'call_link_label': f'md_job_{key}'},
        }
        options = self.options()
        if options is not None:
            job['metadata']['options'] = options
        return self.process.submit(AseMdCalculation, **job)

    def collect(self, finished: Mapping[str, Any]) -> Collected:
        """Every job's frames (a failed job's too, up to its failure) and its failure."""
        collected = Collected()
        for key, node in finished.items():
            if 'trajectory' in node.outputs:
                collected.parts[key] = (node.outputs.trajectory, node.outputs.summary)
                runs = self.state['jobs'][key]
                collected.sources[key] = [self.plan['frames'][r] for r in runs]
            if not node.is_finished_ok:
                collected.failures[key] = job_failure(node)
        return collected
