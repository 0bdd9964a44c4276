"""``MaceTrainParser`` (``trainspot.mace.train``): MACE's model, checkpoints and metrics.

Outputs (exit codes and their order: :class:`~aiida_trainspot.training.base.TrainingParser`):

* ``model``: a :class:`~aiida_trainspot.training.model.PotentialModel` with engine ``mace``,
  the architecture and cutoff of ``config.yaml`` (MACE's ``model`` and ``r_max``), the
  species of the training and validation sets, the dtype, the seed, ``metrics['final']``
  and ``e0s``, the isolated-atom energies MACE used ({'Z': eV}, from its log; a fine-tuning
  from this model starts from them).
  Its model file is ``model/mace.model`` (``mace_stagetwo.model`` when SWA ran); its
  checkpoint the latest ``checkpoints/*.pt``. The TorchScript-compiled model MACE writes
  beside it (``mace_compiled.model``), when there is one, is stored in the node's
  ``extensions/`` folder and named by the attribute ``compiled_model_filename`` (None when
  MACE could not compile the model); the ASE calculator does not need it.
  Its LAMMPS export (``lammps/<model file>-lammps.pt``, attribute ``lammps_filename``) is
  what ``mace_create_lammps_model`` writes, made here (:meth:`MaceTrainParser.export_for_lammps`);
  when the conversion fails the model is still output, without it, and the attribute
  ``lammps_export_error`` says why.
* ``checkpoint``: a FolderData of the ``checkpoints/*.pt`` files (at its top level, which is
  what ``restart_checkpoint`` expects).
* ``metrics``: :func:`.config.parse_results` of ``results/mace_run-<seed>_train.txt``.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from aiida import orm

from ..base import CHECKPOINT_DIR, TrainingParser
from ..lammps_export import export_mace, mace_export_name
from ..model import PotentialModel
from . import config as mace_config

__all__ = ('MaceTrainParser',)

_EPOCH = re.compile(r'_epoch-(\d+)(_swa)?\.pt$')


class MaceTrainParser(TrainingParser):
    """Parse a :class:`~.calculation.MaceTrainCalculation`."""

    def _names(self, directory: str) -> list[str]:
        try:
            return self.retrieved.base.repository.list_object_names(directory)
        except (FileNotFoundError, NotADirectoryError, OSError):
            return []

    def _checkpoints(self) -> list[str]:
        """Retrieved checkpoint files, oldest epoch first."""
        names = [name for name in self._names(CHECKPOINT_DIR) if _EPOCH.search(name)]
        return sorted(names, key=lambda n: (bool(_EPOCH.search(n)[2]), int(_EPOCH.search(n)[1])))

    def model_file(self, files: set[str]) -> str | None:
        """``model/mace_stagetwo.model`` (SWA) or ``model/mace.model``, if retrieved."""
        if mace_config.MODEL_DIR not in files:
            return None
        names = set(self._names(mace_config.MODEL_DIR))
        for name in (f'{mace_config.NAME}_stagetwo.model', f'{mace_config.NAME}.model'):
            if name in names:
                return f'{mace_config.MODEL_DIR}/{name}'
        return None

    def parse_metrics(self) -> dict[str, Any]:
        """Per-epoch metrics from MACE's results file (see :func:`.config.parse_results`)."""
        names = [n for n in self._names(mace_config.RESULTS_DIR) if n.endswith('_train.txt')]
        if not names:
            raise FileNotFoundError(f'no {mace_config.RESULTS_DIR}/*_train.txt was retrieved')
        path = f'{mace_config.RESULTS_DIR}/{sorted(names)[0]}'
        text = self.retrieved.base.repository.get_object_content(path)
        return mace_config.parse_results(text.splitlines())

    def checkpoint_folder(self) -> orm.FolderData | None:
        """The retrieved ``checkpoints/*.pt`` files as a FolderData (None if there are none)."""
        names = self._checkpoints()
        if not names:
            return None
        folder = orm.FolderData()
        repository = self.retrieved.base.repository
        for name in names:
            with repository.open(f'{CHECKPOINT_DIR}/{name}', 'rb') as handle:
                folder.base.repository.put_object_from_filelike(handle, name)
        return folder

    def _config(self) -> dict[str, Any]:
        try:
            text = self.retrieved.base.repository.get_object_content(mace_config.CONFIG_FILE)
        except (FileNotFoundError, OSError):
            return {}
        return yaml.safe_load(text) or {}

    def _e0s(self) -> dict[str, float] | None:
        """The E0s MACE logged it used, {'Z': eV} (None when the log does not say)."""
        names = [
            n
            for n in self._names(mace_config.LOG_DIR)
            if n.endswith('.log') and not n.endswith('_debug.log')
        ]
        for name in sorted(names):
            log = self.retrieved.base.repository.get_object_content(f'{mace_config.LOG_DIR}/{name}')
            e0s = mace_config.parse_e0s(log)
            if e0s:
                return {str(z): e for z, e in e0s.items()}
        return None

    def export_for_lammps(self, model: Path, dtype: str) -> tuple[Path | None, str | None]:
        """The model converted for ``pair_style mace`` beside it, or None and why not.

        The conversion runs here, at parse time, and not in the training job: the job's code
        is ``mace_run_train``, whose environment this package does not control on a remote
        computer (the ``mace_create_lammps_model`` beside it, a Python to run it), while the
        parser has the model file at hand and the MACE the package depends on. It is a
        TorchScript compilation of seconds, once per member, no numerics. The file is made
        with this environment's torch: a LAMMPS linked to an older libtorch may need the model
        converted on its side (``PotentialModel.from_files(..., lammps_file=...)``).
        """
        output = model.with_name(mace_export_name(model.name))
        try:
            return export_mace(model, output, dtype), None
        except Exception as exception:  # the model stays usable: record why, do not fail
            self.logger.warning(f'no LAMMPS export of {model.name}: {exception}')
            return None, f'{type(exception).__name__}: {exception}'

    def build_model(self, model_file: str, metrics: dict[str, Any]) -> PotentialModel:
        """The trained model with its metadata, compiled variant, checkpoint and LAMMPS export."""
        inputs = self.node.inputs
        species = set(inputs.training.species) | set(inputs.validation.species)
        settings = mace_config.model_settings(self._config())
        repository = self.retrieved.base.repository
        compiled = Path(model_file).name.replace('.model', '_compiled.model')
        has_compiled = compiled in self._names(mace_config.MODEL_DIR)
        checkpoints = self._checkpoints()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / 'model').mkdir()
            local_model = tmp / 'model' / Path(model_file).name
            local_model.write_bytes(repository.get_object_content(model_file, 'rb'))
            lammps_file, lammps_error = self.export_for_lammps(local_model, inputs.dtype.value)
            extensions = None
            if has_compiled:
                extensions = tmp / 'extensions'
                extensions.mkdir()
                (extensions / compiled).write_bytes(
                    repository.get_object_content(f'{mace_config.MODEL_DIR}/{compiled}', 'rb')
                )
            checkpoint = None
            if checkpoints:
                checkpoint = tmp / checkpoints[-1]
                checkpoint.write_bytes(
                    repository.get_object_content(f'{CHECKPOINT_DIR}/{checkpoints[-1]}', 'rb')
                )
            return PotentialModel.from_files(
                local_model,
                engine='mace',
                architecture=settings['architecture'],
                species=sorted(species),
                cutoff=settings['cutoff'],
                dtype=inputs.dtype.value,
                seed=inputs.seed.value,
                checkpoint_file=checkpoint,
                extensions_dir=extensions,
                metrics=metrics.get('final', {}),
                extra={
                    'compiled_model_filename': compiled if has_compiled else None,
                    'e0s': self._e0s(),
                    'lammps_export_error': lammps_error,
                },
                lammps_file=lammps_file,
            )
