"""``AseMdCalculation`` (``trainspot.ase.md``): ASE molecular dynamics from many starting frames.

One job runs one trajectory per starting frame with one committee member's potential, in ASE
(the engine that runs wherever PyTorch runs: laptops, CI). The job folder gets, all at relative
paths (the job runs unchanged on a remote computer where the package is installed):

- ``frames.h5``: the starting frames (one shard, structure only);
- ``model/<model file>`` (and ``model/extensions/`` for metatrain models);
- ``md.json``: the runner's configuration (protocol with its defaults filled in, seed, device).

The code (the ``trainspot-ase-md`` executable of this package,
:mod:`aiida_trainspot.runners.ase_md`) writes ``trajectory.h5`` and ``summary.json``, which
:class:`~aiida_trainspot.exploration.ase.parser.AseMdParser` turns into the outputs
``trajectory`` and ``summary``. Ensembles, integrators, abort rules and units:
:mod:`aiida_trainspot.exploration.md`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_trainspot.common.runner_job import Copies, RunnerCalculation
from aiida_trainspot.common.validators import one_of, validate_seed
from aiida_trainspot.data.pesdata import PESData
from aiida_trainspot.training.loader import DEVICES, ENGINES
from aiida_trainspot.training.model import PotentialModel

from ..md import (
    ENGINE,
    METADATA_COLUMNS,
    PRESSURE_UNIT,
    MdProtocol,
    ProtocolError,
    cell_problem,
    d2_missing_species,
)

__all__ = ('AseMdCalculation',)

FRAMES_FILE = 'frames.h5'
CONFIG_FILE = 'md.json'
TRAJECTORY_FILE = 'trajectory.h5'
SUMMARY_FILE = 'summary.json'
MODEL_FOLDER = 'model'
_MAX_REPORTED = 5


def validate_model(value: PotentialModel | None, _ctx=None) -> str | None:
    """A model of a known engine."""
    if value is not None and value.engine not in ENGINES:
        return f'`model`: unknown engine {value.engine!r}; known: {list(ENGINES)}'
    return None


def validate_structures(value: PESData | None, _ctx=None) -> str | None:
    """At least one frame of two atoms or more (single atoms are skipped: no dynamics)."""
    if value is None:
        return None
    if len(value) == 0:
        return '`structures`: the dataset has no frames, there is nothing to run'
    if (value.n_atoms_per_frame() < 2).all():
        return '`structures`: every frame is a single atom, there is no dynamics to run'
    return None


def validate_parameters(value: orm.Dict | None, _ctx=None) -> str | None:
    """A valid MD protocol (:meth:`MdProtocol.from_dict`)."""
    if value is None:
        return None
    try:
        MdProtocol.from_dict(value.get_dict())
    except ProtocolError as exc:
        return f'`parameters`: {exc}'
    return None


def _structure_problems(structures: PESData) -> list[str]:
    """Frames whose cell cannot run (single atoms are not a problem: they are skipped)."""
    columns = structures.get_columns([])
    problems = []
    for index, (cell, pbc, n_atoms) in enumerate(
        zip(columns.frame['cell'], columns.frame['pbc'], columns.n_atoms, strict=True)
    ):
        if n_atoms < 2:
            continue
        problem = cell_problem(cell, pbc, int(n_atoms))
        if problem is not None:
            problems.append(f'frame {index}: {problem}')
    return problems


def validate_inputs(inputs: dict, ctx=None) -> str | None:
    """Cross-checks of the protocol, the frames and the model.

    Skipped for ports a wrapping workflow excluded.
    """
    if ctx is not None and any(port not in ctx for port in ('model', 'structures', 'parameters')):
        return None
    model, structures = inputs.get('model'), inputs.get('structures')
    parameters = inputs.get('parameters')
    if model is None or structures is None or parameters is None or len(structures) == 0:
        return None
    try:
        protocol = MdProtocol.from_dict(parameters.get_dict(), len(structures))
    except ProtocolError as exc:
        return f'`parameters`: {exc}'
    seed = inputs.get('seed')
    if protocol.seeds is not None and seed is not None and seed.value != 0:
        return (
            f'`seed`: {seed.value} is given together with per-run `parameters.seeds`, which '
            'replace it; give one or the other'
        )
    unknown = sorted(set(structures.species) - set(model.species))
    if unknown:
        return (
            f'`structures`: species {unknown} are unknown to the model (it knows '
            f'{sorted(model.species)}); remove those frames or train on them'
        )
    if protocol.dispersion_d2:
        missing = d2_missing_species(structures.species)
        if missing:
            return (
                f'`parameters`: dispersion_d2 is set but D2 has no parameters for {missing} '
                '(it covers H to Xe)'
            )
    problems = _structure_problems(structures)
    if problems:
        more = len(problems) - _MAX_REPORTED
        suffix = f' (and {more} more)' if more > 0 else ''
        return f'`structures`: {"; ".join(problems[:_MAX_REPORTED])}{suffix}'
    return None


def run_id_prefix(inputs: dict[str, Any]) -> str:
    """``ase-<12 hex digits>``: a digest of the model, frames, protocol and seed.

    Independent of the job (the same inputs give the same run ids), distinct for distinct inputs.
    """
    content = {
        'model': inputs['model'].uuid,
        'structures': inputs['structures'].uuid,
        'protocol': inputs['protocol'],
        'seed': inputs['seed'],
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return f'{ENGINE}-{digest[:12]}'


class AseMdCalculation(RunnerCalculation):
    """Molecular dynamics from every starting frame with one potential, in ASE, in one job."""

    PARSER_NAME = 'trainspot.ase.md'
    CONFIG_FILE = CONFIG_FILE
    RUNNER = 'trainspot-ase-md'
    RETRIEVE = (TRAJECTORY_FILE, SUMMARY_FILE)

    @classmethod
    def define(cls, spec):
        """Inputs, outputs and exit codes (300-303: :class:`RunnerCalculation`)."""
        super().define(spec)

        spec.input(
            'model',
            valid_type=PotentialModel,
            validator=validate_model,
            help='The potential that drives the dynamics (one committee member).',
        )
        spec.input(
            'structures',
            valid_type=PESData,
            validator=validate_structures,
            help=(
                'The starting frames, one trajectory each (only their structure is used). '
                'Periodic along any axis: NPT (barostat on the periodic axes only; a '
                'non-periodic cell vector must be orthogonal to the periodic ones); periodic '
                'along none: NVT. Single atoms are skipped.'
            ),
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            validator=validate_parameters,
            help=(
                'The MD protocol: temperatures (K) and pressures (bar), one per starting frame '
                'or one for all; relax_steps (FIRE steps before the MD, cell fixed, 0), '
                'relax_fmax (eV/Angstrom, 0.1); steps (production), thermalisation_steps (never '
                'sampled, no abort rule), sample_interval, timestep_fs (1); seeds and run_ids '
                '(optional, one per starting frame: run i draws from seeds[i] alone and is '
                'called run_ids[i]); friction (1/fs, NVT Langevin, 0.01), ttime (fs, NPT '
                'thermostat, 100), ptime (fs, barostat, 1000); dispersion_d2 (false), d2_s6 '
                '(0.75), d2_cutoff (Angstrom, 30); abort rules, checked in production only, '
                'min_distance (Angstrom, 0.5), max_force (eV/Angstrom, 50), '
                'max_temperature_factor (5). See aiida_trainspot.exploration.md.MdProtocol.'
            ),
        )
        spec.input(
            'seed',
            valid_type=orm.Int,
            default=lambda: orm.Int(0),
            validator=validate_seed,
            help=(
                'Seed of the initial velocities and the Langevin noise (run i draws from '
                '(seed, i)): the same seed gives the same frames. Per-run `parameters.seeds` '
                'replace it (leave it at 0 then).'
            ),
        )
        spec.input(
            'device',
            valid_type=orm.Str,
            default=lambda: orm.Str('cpu'),
            validator=one_of('device', DEVICES),
            help=f'Torch device of the model: one of {list(DEVICES)}.',
        )
        spec.inputs.validator = validate_inputs

        spec.output(
            'trajectory',
            valid_type=PESData,
            help=(
                'The sampled frames, unlabelled (structure only), runs in input order, with the '
                f'metadata columns {", ".join(METADATA_COLUMNS)}: temperature (target, K), '
                f'pressure (target, {PRESSURE_UNIT}; missing for NVT runs), step (MD step from '
                'the start, thermalisation included), time_fs, source_frame (index into '
                f'`structures`), engine ({ENGINE!r}), run_id (str: `parameters.run_ids`, else '
                '"<prefix>-<source_frame>"), '
                'ensemble ("npt" or "nvt").'
            ),
        )
        spec.output(
            'summary',
            valid_type=orm.Dict,
            help=(
                'n_runs, n_sampled, n_aborted, n_skipped, n_steps, wall_time_s, the protocol '
                'with its defaults, units, and per run (`runs`, in input order): run_id, '
                'source_frame, ensemble, temperature, pressure, n_sampled, steps_done, '
                'relax_steps_done, skipped, '
                'skip_reason, aborted, abort_step, abort_rule, abort_value, abort_reason, '
                'final_temperature (K), wall_time_s.'
            ),
        )
        spec.default_output_node = 'summary'

        spec.exit_code(
            310,
            'ERROR_ALL_RUNS_ABORTED',
            message=(
                'No run sampled a frame ({n_runs} runs; see the `summary` output, attached with '
                'the empty `trajectory`); the first: {reason}'
            ),
        )

    def write_inputs(self, folder: Folder, copies: Copies) -> Mapping[str, Any]:
        """Write the frames; copy the model; return the runner's configuration."""
        structures = self.inputs.structures
        model = self.inputs.model
        structures.to_job(folder, FRAMES_FILE, columns=[])
        model_files = self.copy_model(model, MODEL_FOLDER, copies, 'model')
        protocol = MdProtocol.from_dict(self.inputs.parameters.get_dict(), len(structures))
        seed = int(self.inputs.seed.value)
        prefix = run_id_prefix(
            {'model': model, 'structures': structures, 'protocol': protocol.to_dict(), 'seed': seed}
        )
        return {
            'frames': FRAMES_FILE,
            'model': {
                'engine': model.engine,
                **model_files,
                'dtype': str(model.base.attributes.get('dtype') or 'float64'),
            },
            'device': self.inputs.device.value,
            'seed': seed,
            'run_id_prefix': prefix,
            'protocol': protocol.to_dict(),
            'trajectory': TRAJECTORY_FILE,
            'summary': SUMMARY_FILE,
        }
