"""``AseLabelCalculation`` (``trainspot.ase.label``): label a whole dataset in one job with ASE.

The job folder gets the frames (``frames.h5``, one shard with the structure only),
the calculator spec (``calculator.json``) and, for Tersoff, the parameter file; the
code (the ``trainspot-ase-label`` executable of this package) writes ``labels.h5``,
which :class:`~aiida_trainspot.labelling.ase.parser.AseLabelParser` turns into the
``labelled`` and ``failed`` datasets and a ``summary``. Nothing in the job refers to
a local absolute path: it runs unchanged on any computer where the package is
installed (the ``code`` is that computer's ``trainspot-ase-label``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_trainspot.common.runner_job import Copies, RunnerCalculation
from aiida_trainspot.data.pesdata import PESData

from .core import (
    CALCULATOR_FILE,
    FRAMES_FILE,
    LABELS_FILE,
    NEEDS_PARAMETER_FILE,
    PARAMETER_FILE,
    CalculatorSpecError,
    check_calculator_spec,
)

__all__ = ('AseLabelCalculation',)


def validate_calculator(value: orm.Dict | None, _ctx=None) -> str | None:
    """Check the calculator spec alone: name, importability, kwargs."""
    if value is None:
        return None
    try:
        check_calculator_spec(value.get_dict(), None)
    except CalculatorSpecError as exc:
        return f'`calculator`: {exc}'
    return None


def validate_dataset(value: PESData | None, _ctx=None) -> str | None:
    """Refuse an empty dataset: there is nothing to label."""
    if value is not None and len(value) == 0:
        return '`dataset`: the dataset has no frames, there is nothing to label'
    return None


def validate_inputs(inputs: dict, ctx=None) -> str | None:
    """Check that a parameter file comes with the calculators that need one, and only those.

    Skipped when a wrapping workflow excluded ``calculator`` or ``parameter_file``.
    """
    if ctx is not None and any(port not in ctx for port in ('calculator', 'parameter_file')):
        return None
    calculator = inputs.get('calculator')
    if calculator is None:
        return None
    name = calculator.get_dict().get('name')
    has_file = 'parameter_file' in inputs
    if name in NEEDS_PARAMETER_FILE and not has_file:
        return (
            f'`parameter_file`: calculator {name!r} needs the input `parameter_file` '
            '(a LAMMPS .tersoff potential file as a SinglefileData)'
        )
    if name not in NEEDS_PARAMETER_FILE and has_file:
        return (
            f'`parameter_file`: calculator {name!r} takes no parameter file; only '
            f'{sorted(NEEDS_PARAMETER_FILE)} do'
        )
    return None


class AseLabelCalculation(RunnerCalculation):
    """Label every frame of a dataset with an ASE calculator, in one job."""

    PARSER_NAME = 'trainspot.ase.label'
    CONFIG_FILE = CALCULATOR_FILE
    RUNNER = 'trainspot-ase-label'
    RETRIEVE = (LABELS_FILE,)
    SETUP_EXIT_CODE = (
        'ERROR_CALCULATOR_SETUP',
        'The calculator could not be built on the computer: {detail}',
    )

    @classmethod
    def define(cls, spec):
        """Inputs, outputs and exit codes (300-303: :class:`RunnerCalculation`)."""
        super().define(spec)
        spec.input(
            'dataset',
            valid_type=PESData,
            validator=validate_dataset,
            help='The frames to label (only their structure is used; every column is kept).',
        )
        spec.input(
            'calculator',
            valid_type=orm.Dict,
            validator=validate_calculator,
            help=(
                "Calculator spec {'name': 'emt' | 'lj' | 'tersoff' | 'package.module:ClassName', "
                "'kwargs': {...}} (kwargs go to the calculator's constructor, for tersoff to "
                'Tersoff.from_lammps). Energies in eV, forces in eV/Å, stress in eV/Å³ (ASE sign).'
            ),
        )
        spec.input(
            'parameter_file',
            valid_type=orm.SinglefileData,
            required=False,
            help="The potential's parameter file (LAMMPS format), for 'tersoff' only.",
        )
        spec.inputs.validator = validate_inputs

        spec.output(
            'labelled',
            valid_type=PESData,
            help=(
                'The frames that were labelled, in input order, with energy, forces and (frames '
                'periodic along two or three axes) stress; every column of the input is kept.'
            ),
        )
        spec.output(
            'failed',
            valid_type=PESData,
            help=(
                'The frames that failed (possibly none), with metadata `failure_reason` (str) and '
                '`exit_status` (int: the exit status of this job).'
            ),
        )
        spec.output(
            'summary',
            valid_type=orm.Dict,
            help=(
                'n_frames, n_labelled, n_failed, n_stress, labelled_indices, failed_indices '
                '(indices into the input dataset) and failure_reasons {index: reason}.'
            ),
        )
        spec.default_output_node = 'summary'

        spec.exit_code(
            310,
            'ERROR_ALL_FRAMES_FAILED',
            message='All {n_frames} frames failed (see the `failed` output); the first: {reason}',
        )

    def cmdline_params(self) -> list[str]:
        """``FRAMES CALCULATOR LABELS``."""
        return [FRAMES_FILE, CALCULATOR_FILE, LABELS_FILE]

    def write_inputs(self, folder: Folder, copies: Copies) -> Mapping[str, Any]:
        """Write the frames; copy the parameter file; return the calculator spec."""
        self.inputs.dataset.to_job(folder, FRAMES_FILE, columns=[])
        spec = dict(self.inputs.calculator.get_dict())
        spec['kwargs'] = dict(spec.get('kwargs') or {})
        spec['parameter_file'] = None
        if 'parameter_file' in self.inputs:
            parameter_file = self.inputs.parameter_file
            target = PARAMETER_FILE + PurePosixPath(parameter_file.filename).suffix
            copies.append((parameter_file.uuid, parameter_file.filename, target))
            spec['parameter_file'] = target
        return spec
