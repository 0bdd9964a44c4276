"""The base of every job whose code is a runner (a console script of this package), and its parser.

A subclass of :class:`RunnerCalculation` declares its inputs and outputs, names its files
(``RUNNER``, ``CONFIG_FILE``, ``RETRIEVE``) and parser
(``PARSER_NAME``), and writes its inputs in :meth:`RunnerCalculation.write_inputs`, which
returns the runner's configuration. The base owns the rest: the option defaults (one process,
no MPI, the parser), exit codes 300-303, the JSON configuration file, the command line, copying
a model's files (:meth:`RunnerCalculation.copy_model`) and the retrieve list. A dataset goes to
the job with :meth:`PESData.to_job <aiida_trainspot.data.pesdata.PESData.to_job>`.

A subclass of :class:`RunnerParser` reads the retrieved outputs; when one is missing,
:meth:`RunnerParser.missing_output` turns the runner's ``PREFIX: detail`` line on stderr (see
:mod:`aiida_trainspot.common.runner`) into the exit code it stands for. Every path in the job
folder is relative: the job runs unchanged on any computer where the package is installed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from aiida.common import CalcInfo, CodeInfo
from aiida.common.folders import Folder
from aiida.engine import CalcJob, ExitCode
from aiida.parsers import Parser

from aiida_trainspot.data.paths import plain_filename

from .runner import INPUT_FAILED, MODEL_LOAD_FAILED

__all__ = (
    'EXTENSIONS',
    'NEEDS_EXTENSIONS',
    'RunnerCalculation',
    'RunnerParser',
    'one_process_options',
)

#: Where a model node keeps the files its calculator needs at load time, and where they go in
#: the job folder (beside the model file).
EXTENSIONS = 'extensions'
#: Engines whose calculators need the model's ``extensions/`` folder at load time.
NEEDS_EXTENSIONS = frozenset({'metatrain'})
#: Characters of the runner's stderr an exit message quotes when no failure line explains it.
STDERR_TAIL = 2000

#: A job's local copies: (node uuid, key in the node's repository, path in the job folder).
Copies = list[tuple[str, str, str]]


def one_process_options(spec: Any, parser_name: str | None = None) -> None:
    """Default a job's options to one process without MPI (and to ``parser_name``, if given)."""
    options = spec.inputs['metadata']['options']
    options['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
    options['withmpi'].default = False
    if parser_name is not None:
        options['parser_name'].default = parser_name


class RunnerCalculation(CalcJob):
    """A job whose code is a runner of this package (abstract: a subclass writes the inputs)."""

    #: The parser's entry point (the default of ``metadata.options.parser_name``).
    PARSER_NAME: ClassVar[str] = ''
    #: The runner's JSON configuration, written from what :meth:`write_inputs` returns.
    CONFIG_FILE: ClassVar[str] = ''
    #: The runner (console script) the job's code runs: its stdout and stderr go to
    #: ``<RUNNER>.out`` and ``<RUNNER>.err`` (retrieved; the parser reads stderr's failure line).
    RUNNER: ClassVar[str] = ''
    #: What the job retrieves besides stdout and stderr.
    RETRIEVE: ClassVar[tuple[str, ...]] = ()
    #: Name and message of exit code 302: the runner could not set up its model or calculator.
    SETUP_EXIT_CODE: ClassVar[tuple[str, str]] = (
        'ERROR_MODEL_LOAD_FAILED',
        'A model could not be loaded on the computer: {detail}',
    )

    @classmethod
    def define(cls, spec):
        """Option defaults and the exit codes of every runner job (300-303)."""
        super().define(spec)
        one_process_options(spec, cls.PARSER_NAME)
        spec.exit_code(
            300,
            'ERROR_OUTPUT_MISSING',
            invalidates_cache=True,
            message='The runner wrote no {filename}: {detail}',
        )
        spec.exit_code(
            301,
            'ERROR_OUTPUT_UNREADABLE',
            invalidates_cache=True,
            message='The output {filename} is unreadable or inconsistent: {detail}',
        )
        name, message = cls.SETUP_EXIT_CODE
        spec.exit_code(302, name, message=message)
        spec.exit_code(
            303,
            'ERROR_INPUT_UNREADABLE',
            invalidates_cache=True,
            message='The runner could not read its input files: {detail}',
        )

    @classmethod
    def stream_file(cls, stream: str) -> str:
        """Where the runner's ``'out'`` or ``'err'`` stream goes: ``<RUNNER>.<stream>``."""
        return f'{cls.RUNNER}.{stream}'

    def write_inputs(self, folder: Folder, copies: Copies) -> Mapping[str, Any]:
        """Write the job's input files to ``folder``, add its copies; return the configuration."""
        raise NotImplementedError(f'{type(self).__name__} writes no inputs')

    def cmdline_params(self) -> list[str]:
        """The runner's arguments: the configuration file."""
        return [self.CONFIG_FILE]

    def copy_model(self, model: Any, target: str, copies: Copies, port: str) -> dict[str, Any]:
        """Copy a model node's file (and extensions, if its engine needs them) to ``target/``.

        Returns ``{'path': the model file, 'extensions': its folder or None}`` in the job
        folder. ``port`` names the input in the message if the node's file name is not plain.
        """
        filename = plain_filename(model.model_filename, f'{port}: model_filename')
        path = f'{target}/{filename}'
        copies.append((model.uuid, model.model_path, path))
        extensions = None
        if model.engine in NEEDS_EXTENSIONS and model.has_extensions:
            extensions = f'{target}/{EXTENSIONS}'
            copies.append((model.uuid, EXTENSIONS, extensions))
        return {'path': path, 'extensions': extensions}

    def prepare_for_submission(self, folder: Folder) -> CalcInfo:
        """Write the inputs and the configuration; describe one run of the runner on them."""
        copies: Copies = []
        config = self.write_inputs(folder, copies)
        with folder.open(self.CONFIG_FILE, 'w', encoding='utf-8') as handle:
            json.dump(dict(config), handle, indent=2, sort_keys=True)
        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = self.cmdline_params()
        codeinfo.stdout_name = self.stream_file('out')
        codeinfo.stderr_name = self.stream_file('err')
        codeinfo.withmpi = self.inputs.metadata.options.withmpi
        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = copies
        calcinfo.retrieve_list = [*self.RETRIEVE, self.stream_file('out'), self.stream_file('err')]
        return calcinfo


class RunnerParser(Parser):
    """The parser of a :class:`RunnerCalculation` (abstract: a subclass reads the outputs)."""

    #: stderr prefix of the runner's failure line -> the exit code it stands for.
    FAILURES: ClassVar[Mapping[str, str]] = {
        MODEL_LOAD_FAILED: 'ERROR_MODEL_LOAD_FAILED',
        INPUT_FAILED: 'ERROR_INPUT_UNREADABLE',
    }

    def retrieved_names(self) -> list[str]:
        """The names at the top of the retrieved folder."""
        return self.retrieved.base.repository.list_object_names()

    def missing_output(self, filenames: Sequence[str]) -> ExitCode | None:
        """None when every one of ``filenames`` was retrieved; else why the first one is missing.

        The last stderr line that starts with a prefix of :attr:`FAILURES` gives the exit
        code and its detail; without one, ``ERROR_OUTPUT_MISSING`` quotes the tail of stderr.
        """
        names = self.retrieved_names()
        missing = [filename for filename in filenames if filename not in names]
        if not missing:
            return None
        stderr_file = self.node.process_class.stream_file('err')
        stderr = ''
        if stderr_file in names:
            stderr = self.retrieved.base.repository.get_object_content(stderr_file, mode='r')
        for line in reversed(stderr.splitlines()):
            for prefix, exit_code in self.FAILURES.items():
                if line.startswith(prefix):
                    detail = line[len(prefix) :].lstrip(': ')
                    return getattr(self.exit_codes, exit_code).format(detail=detail)
        detail = stderr[-STDERR_TAIL:].strip() or 'the runner printed nothing on stderr'
        return self.exit_codes.ERROR_OUTPUT_MISSING.format(filename=missing[0], detail=detail)

    def unreadable(self, filename: str, exc: BaseException | str) -> ExitCode:
        """``ERROR_OUTPUT_UNREADABLE`` for ``filename``: the exception (or reason) as detail."""
        detail = exc if isinstance(exc, str) else f'{type(exc).__name__}: {exc}'
        return self.exit_codes.ERROR_OUTPUT_UNREADABLE.format(filename=filename, detail=detail)
