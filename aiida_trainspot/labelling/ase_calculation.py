"""``AseLabelCalculation`` (``trainspot.ase.label``): label a whole dataset in one job with ASE.

The job folder gets the frames (``frames.h5``, one shard with the structure only),
the calculator spec (``calculator.json``) and, for Tersoff, the parameter file; the
code (the ``trainspot-ase-label`` executable of this package) writes ``labels.h5``,
which :class:`~aiida_trainspot.labelling.ase_parser.AseLabelParser` turns into the
``labelled`` and ``failed`` datasets and a ``summary``. Nothing in the job refers to
a local absolute path: it runs unchanged on any computer where the package is
installed (the ``code`` is that computer's ``trainspot-ase-label``).
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from aiida import orm
from aiida.common.datastructures import CalcInfo, CodeInfo
from aiida.common.folders import Folder
from aiida.engine import CalcJob

from aiida_trainspot.data.pesdata import PESData
from aiida_trainspot.data.store import write_shard

from .ase_engine import (
    CALCULATOR_FILE,
    FRAMES_FILE,
    LABELS_FILE,
    NEEDS_PARAMETER_FILE,
    PARAMETER_FILE,
    STDERR_FILE,
    STDOUT_FILE,
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


class AseLabelCalculation(CalcJob):
    """Label every frame of a dataset with an ASE calculator, in one job."""

    @classmethod
    def define(cls, spec):
        """Inputs, outputs and exit codes."""
        super().define(spec)
        options = spec.inputs['metadata']['options']
        options['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        options['withmpi'].default = False
        options['parser_name'].default = 'trainspot.ase.label'

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
            300,
            'ERROR_OUTPUT_MISSING',
            invalidates_cache=True,
            message='The labeller wrote no {filename}: {detail}',
        )
        spec.exit_code(
            301,
            'ERROR_OUTPUT_UNREADABLE',
            invalidates_cache=True,
            message='The labels file {filename} is unreadable or inconsistent: {detail}',
        )
        spec.exit_code(
            302,
            'ERROR_CALCULATOR_SETUP',
            message='The calculator could not be built on the computer: {detail}',
        )
        spec.exit_code(
            310,
            'ERROR_ALL_FRAMES_FAILED',
            message='All {n_frames} frames failed (see the `failed` output); the first: {reason}',
        )

    def prepare_for_submission(self, folder: Folder) -> CalcInfo:
        """Write the frames and the calculator spec; run the labeller on them."""
        dataset = self.inputs.dataset
        write_shard(dataset.get_columns([]), folder.get_abs_path(FRAMES_FILE))

        local_copy_list = []
        spec = dict(self.inputs.calculator.get_dict())
        spec['kwargs'] = dict(spec.get('kwargs') or {})
        spec['parameter_file'] = None
        if 'parameter_file' in self.inputs:
            parameter_file = self.inputs.parameter_file
            target = PARAMETER_FILE + PurePosixPath(parameter_file.filename).suffix
            local_copy_list.append((parameter_file.uuid, parameter_file.filename, target))
            spec['parameter_file'] = target
        with folder.open(CALCULATOR_FILE, 'w', encoding='utf-8') as handle:
            json.dump(spec, handle, indent=2, sort_keys=True)

        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [FRAMES_FILE, CALCULATOR_FILE, LABELS_FILE]
        codeinfo.stdout_name = STDOUT_FILE
        codeinfo.stderr_name = STDERR_FILE
        codeinfo.withmpi = self.inputs.metadata.options.withmpi

        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = local_copy_list
        calcinfo.retrieve_list = [LABELS_FILE, STDOUT_FILE, STDERR_FILE]
        return calcinfo
