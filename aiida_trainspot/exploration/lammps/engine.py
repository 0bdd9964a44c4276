"""The ``lammps`` exploration engine on upstream aiida-lammps (``lammps.raw``): inputs, frames back.

One MD run per starting frame is one :class:`~aiida_lammps.calculations.raw.LammpsRawCalculation`
(entry point ``lammps.raw``): its ``script`` is :func:`.input.md_script`'s, its ``files``
the data file (``structure.data``) and the potential's files, and ``settings`` asks for the dump
(``trajectory.dump``) and the samples (``samples.dat``) besides LAMMPS' output (``lammps.out``).
Everything in the job folder is relative, so a run goes unchanged to a remote computer.

- :func:`classical_potential` / :func:`model_potential`: a :class:`LammpsPotential` (pair-style
  spec of :mod:`.input` + the files it needs as ``SinglefileData``), from a LAMMPS
  parameter file or from a :class:`~aiida_trainspot.training.model.PotentialModel` (its own
  LAMMPS export, stored by the training).
- :func:`export_lammps_model` (calcfunction): the LAMMPS file of a MACE model that has none
  stored (:func:`needs_export`), converted when an exploration draws it.
- :func:`md_inputs`: the inputs of one ``lammps.raw`` job and its ``conversion`` ``Dict``
  (types, rotation, atoms, MD targets), which the frames need to come back.
- :func:`lammps_trajectory_frames` (calcfunction): the retrieved folders of finished runs and
  their ``conversion`` nodes -> ``frames`` (a :class:`~aiida_trainspot.data.PESData`, every run
  in order) and ``summary`` (a ``Dict`` per run: frames, last step, ``fix halt`` abort).
  :func:`collect_frames` calls it for a list of finished jobs.
"""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from aiida import orm
from aiida.engine import calcfunction
from aiida.plugins import CalculationFactory
from ase import Atoms

from aiida_trainspot.data.paths import path_inside, plain_filename, relative_inside
from aiida_trainspot.data.pesdata import PESData

from ..engine import Collected, ExplorationEngine, job_failure
from .input import (
    DATA_FILE,
    DUMP_FILE,
    SAMPLES_FILE,
    LammpsInputError,
    check_potential,
    lammps_species,
    prepare_run,
    trajectory_records,
)

__all__ = (
    'ENGINE',
    'RAW_PLUGIN',
    'LammpsEngine',
    'LammpsPotential',
    'classical_potential',
    'collect_frames',
    'export_lammps_model',
    'export_problem',
    'lammps_trajectory_frames',
    'md_inputs',
    'model_potential',
    'needs_export',
)

ENGINE = 'lammps'
#: The aiida-lammps calculation every run uses.
RAW_PLUGIN = 'lammps.raw'
#: LAMMPS' screen output, which ``lammps.raw`` always retrieves.
OUTPUT_FILE = 'lammps.out'
SCRIPT_FILE = 'input.in'
EXTENSIONS_DIR = 'extensions'
DEFAULT_OPTIONS = {
    'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1},
    'withmpi': False,
}


@dataclass
class LammpsPotential:
    """A pair-style spec of :mod:`.input` and the files the job folder needs for it.

    ``files`` maps a file name in the job folder to its node; ``prepend_text`` holds shell
    lines that move files into sub-folders (``lammps.raw`` writes its files flat: metatomic's
    extensions need their tree); ``species`` are those the potential knows, if it says
    (a model's), which then become the atom types of every run.
    """

    spec: dict[str, Any]
    files: dict[str, orm.SinglefileData] = field(default_factory=dict)
    prepend_text: str = ''
    species: list[str] | None = None


def _singlefile(source: str | Path | orm.SinglefileData) -> orm.SinglefileData:
    """``source`` itself if a node, else a new node of the file at that path (same name)."""
    if isinstance(source, orm.SinglefileData):
        return source
    return orm.SinglefileData(Path(source), filename=Path(source).name)


def classical_potential(
    pair_style: str,
    parameter_file: str | Path | orm.SinglefileData | None = None,
    *,
    dispersion: Mapping[str, Any] | None = None,
    species: Sequence[str] | None = None,
) -> LammpsPotential:
    """A classical LAMMPS potential: ``pair_style`` + one coefficient file for all types.

    E.g. ``classical_potential('tersoff', '/usr/share/lammps/potentials/SiC.tersoff')`` gives
    ``pair_style tersoff`` and ``pair_coeff * * SiC.tersoff <element per type>``.
    ``dispersion`` (``{'s6', 'd', 'cutoff', 'parameters'}``, any subset, or ``{}``) adds Grimme
    D2. ``species`` (optional) fixes the atom types of every run.
    """
    spec: dict[str, Any] = {'kind': 'classical', 'pair_style': pair_style}
    files = {}
    if parameter_file is not None:
        node = _singlefile(parameter_file)
        spec['file'] = node.filename
        files[node.filename] = node
    if dispersion is not None:
        spec['dispersion'] = dict(dispersion)
    check_potential(spec)
    return LammpsPotential(
        spec=spec, files=files, species=lammps_species(species) if species else None
    )


def model_potential(
    model: Any,
    *,
    lammps_model: str | Path | orm.SinglefileData | None = None,
    device: str | None = 'cpu',
    dispersion: Mapping[str, Any] | None = None,
) -> LammpsPotential:
    """The LAMMPS potential of a :class:`~aiida_trainspot.training.model.PotentialModel`.

    The file LAMMPS loads is the model's own export (``model.lammps_export()``: the one the
    training stored under ``lammps/``; a metatrain model's file when none is stored), or
    ``lammps_model`` when given (a file converted by hand).

    - ``mace``: ``pair_style mace no_domain_decomposition`` with the ``mace_create_lammps_model``
      file (``model.model-lammps.pt``); a MACE model without one needs ``lammps_model`` (or
      :func:`export_lammps_model`): the training ``.model`` does not load in LAMMPS.
    - ``metatrain``: ``pair_style metatomic`` with the exported metatomic model on ``device``,
      with its ``extensions`` folder when it has one.

    The model's species become the atom types of every run.
    """
    engine = model.engine
    if engine not in ('mace', 'metatrain'):
        raise LammpsInputError(f'no LAMMPS pair style for models of engine {engine!r}')
    species = lammps_species(model.species)
    if lammps_model is not None:
        node = _singlefile(lammps_model)
    else:
        export = model.lammps_export()
        if export is None:
            raise LammpsInputError(
                f'{model.missing_lammps_export()}, or as `lammps_model` here (LAMMPS cannot '
                'read a training `.model`; `export_lammps_model` converts a MACE model)'
            )
        node = orm.SinglefileData(io.BytesIO(export[1]), filename=export[0])
    files: dict[str, orm.SinglefileData] = {node.filename: node}
    prepend: list[str] = []
    if engine == 'mace':
        spec: dict[str, Any] = {'kind': 'mace', 'file': node.filename}
    else:
        spec = {'kind': 'metatomic', 'file': node.filename}
        if device:
            spec['device'] = device
        if model.has_extensions:
            spec['extensions'] = EXTENSIONS_DIR
            extension_files, prepend = _extension_files(model)
            files.update(extension_files)
    if dispersion is not None:
        spec['dispersion'] = dict(dispersion)
    check_potential(spec)
    return LammpsPotential(spec=spec, files=files, prepend_text='\n'.join(prepend), species=species)


def needs_export(model: Any) -> bool:
    """Whether ``model`` is to be converted for LAMMPS: MACE, no export, none attempted.

    A model whose training tried and failed (``lammps_export_error``) is not tried again:
    :func:`export_problem` refuses it.
    """
    return model.engine == 'mace' and not model.lammps_filename and not model.lammps_export_error


def export_problem(model: Any) -> str | None:
    """Why ``model`` cannot run in LAMMPS (None when its export is stored or can be made)."""
    if model.lammps_filename or not model.lammps_export_error:
        return None
    return model.missing_lammps_export()


@calcfunction
def export_lammps_model(model: orm.Data) -> orm.SinglefileData:
    """The ``mace_create_lammps_model`` file of a MACE model that has none stored.

    For models made by ``PotentialModel.from_files`` without ``lammps_file`` (a foundation
    model, a committee given by hand): the exploration converts the drawn member once, here,
    so the graph links the file LAMMPS ran to the model it came from. Trained members carry
    their export from their training job's parser. The conversion takes seconds (TorchScript
    compilation, no numerics), in the model's training dtype.
    """
    import tempfile

    from aiida_trainspot.training.lammps_export import export_mace, mace_export_name

    if model.engine != 'mace':
        raise ValueError(f'export_lammps_model: model <{model.pk}> is not a MACE model')
    with tempfile.TemporaryDirectory() as tmp:
        # the model file only, not the checkpoint; its name comes from the node: kept inside tmp
        source = path_inside(tmp, plain_filename(model.model_filename, 'model_filename'))
        source.write_bytes(model.base.repository.get_object_content(model.model_path, 'rb'))
        name = mace_export_name(model.model_filename)
        output = export_mace(source, Path(tmp) / name, model.base.attributes.get('dtype'))
        return orm.SinglefileData(io.BytesIO(output.read_bytes()), filename=name)


def move_into_tree(flat: str, path: str | PurePosixPath) -> str:
    """The shell line that moves the job folder's file ``flat`` to ``path`` (a relative path).

    Every word is quoted (:func:`shlex.quote`): the names come from a model's repository, and a
    blank, ``;`` or quote in one stays part of the name instead of becoming shell syntax.

    :raises ValueError: when ``path`` or ``flat`` would lead out of the job folder.
    """
    flat = str(relative_inside(flat, 'extension file'))
    target = relative_inside(str(path), 'extension file')
    mkdir = shlex.join(['mkdir', '-p', str(target.parent)])
    return f'{mkdir} && {shlex.join(["mv", flat, str(target)])}'


def _extension_files(model: Any) -> tuple[dict[str, orm.SinglefileData], list[str]]:
    """The model's ``extensions/`` tree as flat files and the shell lines that rebuild it."""
    repository = model.base.repository
    files: dict[str, orm.SinglefileData] = {}
    lines = []
    for root, _, names in repository.walk(EXTENSIONS_DIR):
        for name in sorted(names):
            path = PurePosixPath(root) / name
            flat = 'extension_' + re.sub(
                r'[^A-Za-z0-9_.-]', '_', str(path.relative_to(EXTENSIONS_DIR))
            )
            content = repository.get_object_content(str(path), 'rb')
            files[flat] = orm.SinglefileData(io.BytesIO(content), filename=flat)
            lines.append(move_into_tree(flat, path))
    return files, lines


def md_inputs(
    code: orm.AbstractCode,
    atoms: Atoms,
    potential: LammpsPotential,
    md: Mapping[str, Any],
    *,
    species: Sequence[str] | None = None,
    run_id: str | int = 0,
    source_frame: int = 0,
    include_initial: bool = False,
    options: Mapping[str, Any] | None = None,
    label: str | None = None,
) -> tuple[dict[str, Any], orm.Dict]:
    """Inputs of one ``lammps.raw`` MD run from ``atoms``, and its ``conversion`` ``Dict``.

    ``md``: :func:`.input.md_script`'s settings (``temperature`` K, ``steps``, ``seed``
    required; ``ensemble``, ``pressure`` bar, ``barostat``, ``timestep_fs``,
    ``sample_interval``, ``thermalisation_steps``, ``relax_steps``, ``relax_fmax`` eV/Å,
    ``tdamp_fs``, ``pdamp_fs``, and the production's abort rules ``max_temperature`` K,
    ``min_distance`` Å, ``max_force`` eV/Å).
    ``species``: the atom types (default: the potential's species, else the structure's).
    ``options`` update ``metadata.options`` (default: one process, no MPI). Launch with
    ``submit(CalculationFactory('lammps.raw'), **inputs)``; keep the ``conversion`` for
    :func:`lammps_trajectory_frames`.
    """
    types = species if species is not None else potential.species
    prepared = prepare_run(
        atoms,
        potential.spec,
        md,
        species=types,
        run_id=run_id,
        source_frame=source_frame,
        include_initial=include_initial,
    )
    files = {
        'structure': orm.SinglefileData(io.BytesIO(prepared.data.encode()), filename=DATA_FILE)
    }
    filenames = {'structure': DATA_FILE}
    for index, (name, node) in enumerate(sorted(potential.files.items())):
        key = f'potential_{index}'
        files[key] = node
        filenames[key] = name
    metadata_options = {**DEFAULT_OPTIONS, **dict(options or {})}
    if potential.prepend_text:
        existing = metadata_options.get('prepend_text', '')
        metadata_options['prepend_text'] = '\n'.join(
            part for part in (existing, potential.prepend_text) if part
        )
    inputs = {
        'code': code,
        'script': orm.SinglefileData(io.BytesIO(prepared.script.encode()), filename=SCRIPT_FILE),
        'files': files,
        'filenames': orm.Dict(filenames),
        'settings': orm.Dict({'additional_retrieve_list': [DUMP_FILE, SAMPLES_FILE]}),
        'metadata': {
            'label': label or f'lammps-md-{run_id}',
            'options': metadata_options,
        },
    }
    return inputs, orm.Dict(prepared.conversion)


def _natural_key(label: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', label))


def _text(folder: orm.FolderData, name: str, required: bool = True) -> str:
    if name not in folder.base.repository.list_object_names():
        if required:
            raise ValueError(f'the retrieved folder <{folder.pk}> has no {name}')
        return ''
    return folder.base.repository.get_object_content(name, 'r')


@calcfunction
def lammps_trajectory_frames(**runs: orm.Data) -> dict[str, orm.Data]:
    """The frames of finished LAMMPS runs: ``retrieved_<k>`` + ``conversion_<k>`` per run.

    Returns ``frames`` (a PESData of every run's frames, runs in natural order of ``k``, frames
    by step; metadata of :func:`.input.trajectory_records`) and ``summary`` (``{'runs':
    [per-run summary], 'n_frames': total}``). Raises if a dump does not hold the structure's
    elements atom by atom.
    """
    keys = sorted(
        (k[len('retrieved_') :] for k in runs if k.startswith('retrieved_')), key=_natural_key
    )
    unpaired = sorted(set(runs) - {f'{p}_{k}' for k in keys for p in ('retrieved', 'conversion')})
    if unpaired or not all(f'conversion_{k}' in runs for k in keys):
        raise ValueError(f'give `retrieved_<k>` and `conversion_<k>` pairs; unpaired: {unpaired}')
    records: list[dict[str, Any]] = []
    summaries = []
    for key in keys:
        folder = runs[f'retrieved_{key}']
        conversion = runs[f'conversion_{key}'].get_dict()
        run_records, summary = trajectory_records(
            _text(folder, DUMP_FILE),
            _text(folder, SAMPLES_FILE, required=False),
            _text(folder, OUTPUT_FILE, required=False),
            conversion,
        )
        records += run_records
        summaries.append(summary)
    return {
        'frames': PESData.from_frames(records),
        'summary': orm.Dict({'runs': summaries, 'n_frames': len(records)}),
    }


def collect_frames(
    calculations: Sequence[orm.CalcJobNode], conversions: Sequence[orm.Dict]
) -> dict[str, orm.Data]:
    """Run :func:`lammps_trajectory_frames` on finished ``lammps.raw`` jobs (in this order)."""
    if len(calculations) != len(conversions):
        raise ValueError('give one conversion per calculation')
    kwargs: dict[str, orm.Data] = {}
    for index, (calculation, conversion) in enumerate(zip(calculations, conversions, strict=True)):
        kwargs[f'retrieved_{index}'] = calculation.outputs.retrieved
        kwargs[f'conversion_{index}'] = conversion
    return lammps_trajectory_frames(**kwargs)


class LammpsEngine(ExplorationEngine):
    """One ``lammps.raw`` job per run: a classical potential, or the member's LAMMPS export."""

    @classmethod
    def define(cls, spec: Any, namespace: str) -> None:
        """``lammps.pair_style`` and ``lammps.parameter_file``: the potential without a model."""
        spec.input_namespace(
            namespace,
            required=False,
            help='Classical potential of the lammps engine (without a model). A model runs as '
            'its own LAMMPS export, stored with it by the training.',
        )
        spec.input(
            f'{namespace}.pair_style', valid_type=orm.Str, required=False, help='e.g. tersoff.'
        )
        spec.input(f'{namespace}.parameter_file', valid_type=orm.SinglefileData, required=False)

    @classmethod
    def validate(
        cls, inputs: Mapping[str, Any], stage_inputs: Mapping[str, Any], has_model: bool = True
    ) -> str | None:
        """An ``lmp`` code, and a model that runs in LAMMPS or a classical pair style."""
        if 'code' not in stage_inputs:
            return 'code: the lammps engine needs a code (lmp, plugin lammps.raw)'
        if not has_model and 'pair_style' not in inputs:
            return (
                'lammps.pair_style: give a classical pair style (with lammps.parameter_file) '
                'or a model'
            )
        models = {'model': stage_inputs['model']} if 'model' in stage_inputs else {}
        models.update({f'models.{k}': v for k, v in (stage_inputs.get('models') or {}).items()})
        for port, model in sorted(models.items()):
            problem = export_problem(model)
            if problem:
                return f'{port}: {problem}'
        return None

    def prepare(self) -> list[str]:
        """One job per run."""
        self.state['conversions'] = {}
        return [str(i) for i in range(len(self.plan['frames']))]

    def _potential(self) -> LammpsPotential:
        """The drawn member as LAMMPS loads it (its stored export), else the classical potential.

        A MACE member without a stored export (made by ``PotentialModel.from_files``) is
        converted once by the calcfunction :func:`export_lammps_model`; every run then gets that
        file.
        """
        model = self.model
        if model is None:
            lammps = self.inputs
            return classical_potential(lammps['pair_style'].value, lammps.get('parameter_file'))
        export = None
        if needs_export(model):
            if 'lammps_export' not in self.state:
                node = export_lammps_model(model)
                self.state['lammps_export'] = node.pk
                self.process.report(f'converted model <{model.pk}> for LAMMPS: <{node.pk}>')
            export = orm.load_node(self.state['lammps_export'])
        device = self.process.inputs.device.value
        return model_potential(model, lammps_model=export, device=device)

    def submit(self, key: str) -> Any:
        """The ``lammps.raw`` job of run ``key``; its conversion record is kept for collect."""
        run = int(key)
        plan = self.plan
        frame = plan['frames'][run]
        atoms = self.process.inputs.structures.get_atoms(frame)
        settings = self.protocol.lammps_settings(
            plan['temperatures'][run], plan['pressures_kbar'][run], self.seeds[run]
        )
        inputs, conversion = md_inputs(
            self.process.inputs.code,
            atoms,
            self._potential(),
            settings,
            run_id=run,
            source_frame=frame,
            options=self.options(),
        )
        conversion.store()
        self.state['conversions'][key] = conversion.pk
        inputs['metadata']['call_link_label'] = f'md_run_{run}'
        return self.process.submit(CalculationFactory(RAW_PLUGIN), **inputs)

    def collect(self, finished: Mapping[str, Any]) -> Collected:
        """The frames of every run that finished ok, in run order, as one part."""
        collected = Collected()
        good = []
        for key, node in finished.items():
            if node.is_finished_ok and 'retrieved' in node.outputs:
                good.append((node, orm.load_node(self.state['conversions'][key])))
            else:
                collected.failures[key] = job_failure(node)
        if good:
            frames = collect_frames([n for n, _ in good], [c for _, c in good])
            collected.parts['0'] = (frames['frames'], frames['summary'])
        return collected
