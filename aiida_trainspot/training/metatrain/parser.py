"""``MetatrainTrainParser`` (``trainspot.metatrain.train``): metrics, model and checkpoint.

* ``metrics``: per-epoch errors from ``train.csv`` (or, without it, the ``Epoch:`` lines of
  the log in stdout): ``{'epoch': [...], 'learning_rate': [...], 'train': {...},
  'validation': {...}}``, keys as the MACE engine's with units in their names (e.g.
  ``rmse_e_per_atom_meV``, ``rmse_f_meV_per_A``; see :func:`.config.metric_key`); ``final``:
  the errors at the epoch of the exported (best) model, ``{'epoch': N, 'train': {...},
  'validation': {...}}``; ``evaluation``: metatrain's evaluation of the exported model at
  the end (``train``/``validation``/``test``), when it ran (option ``final_eval``).
* ``model``: a :class:`~aiida_trainspot.training.model.PotentialModel` with ``model.pt``, its
  ``extensions/`` and the ``model.ckpt`` checkpoint (what fine-tuning reads); its
  ``metrics`` attribute is ``metrics['final']`` (with ``evaluation`` when there is one).
  ``model.pt`` is already the file ``pair_style metatomic`` loads (``mtt train`` exports a
  metatomic ``AtomisticModel``): once metatomic's check passes it is also stored as the
  LAMMPS export, ``lammps/model.pt`` (the same bytes, deduplicated by the repository; LAMMPS
  finds the extensions in ``extensions/``); otherwise ``lammps_export_error`` says why.
* ``checkpoint``: the latest intermediate ``model_<epoch>.ckpt`` (to resume with
  ``restart_checkpoint``), when the run wrote one.

metatrain logs to stdout and writes a failed run's traceback to ``error.log``, not stderr:
:meth:`MetatrainTrainParser.crashed` and :meth:`MetatrainTrainParser.stderr_tail` read those.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from aiida import orm

from ..base import STDOUT, TrainingParser
from ..lammps_export import metatomic_export_problem
from ..model import PotentialModel
from . import config
from .calculation import (
    CHECKPOINT_FILE,
    ERROR_FILE,
    EXPANDED_OPTIONS_FILE,
    EXTENSIONS_DIR,
    METRICS_FILE,
    MODEL_FILE,
    OPTIONS_FILE,
    latest_checkpoint,
)

__all__ = ('MetatrainTrainParser',)

#: Lines of metatrain's error text that say nothing about the error itself.
_BOILERPLATE = (
    'The error above most likely originates from an architecture',
    'If you think this is a bug',
    'If the error message below is unclear',
)


class MetatrainTrainParser(TrainingParser):
    """Parse an ``mtt train`` run (see :class:`.calculation.MetatrainTrainCalculation`)."""

    def parse(self, **kwargs: Any):
        """Remember the temporary folder (intermediate checkpoints), then the shared parse."""
        self._temporary_folder = kwargs.get('retrieved_temporary_folder')
        return super().parse(**kwargs)

    # files --------------------------------------------------------------------------------
    def _text(self, name: str) -> str | None:
        try:
            return self.retrieved.base.repository.get_object_content(name)
        except (FileNotFoundError, OSError):
            return None

    def _options(self) -> dict[str, Any]:
        """The expanded options metatrain ran with (else the options written at submission)."""
        text = self._text(EXPANDED_OPTIONS_FILE)
        if text is not None:
            return yaml.safe_load(text) or {}
        with self.node.base.repository.open(OPTIONS_FILE) as handle:
            return yaml.safe_load(handle) or {}

    # failures -----------------------------------------------------------------------------
    def crashed(self) -> bool:
        """Whether metatrain wrote ``error.log`` or stderr shows a Python error."""
        return bool((self._text(ERROR_FILE) or '').strip()) or super().crashed()

    def stderr_tail(self, lines: int = 5) -> str:
        """The end of metatrain's ``error.log`` (the exception), else the end of stderr."""
        text = self._text(ERROR_FILE)
        if not (text or '').strip():
            return super().stderr_tail(lines)
        kept = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.strip().startswith(_BOILERPLATE)
        ]
        return ' | '.join(kept[-lines:])

    # engine hooks -------------------------------------------------------------------------
    def model_file(self, files: set[str]) -> str | None:
        """``model.pt`` if it was retrieved."""
        return MODEL_FILE if MODEL_FILE in files else None

    def parse_metrics(self) -> dict[str, Any]:
        """Per-epoch metrics, the best epoch and the final evaluation."""
        log = self._text(STDOUT) or ''
        text = self._text(METRICS_FILE)
        metrics = config.parse_epoch_csv(text) if text else config.parse_epoch_log(log)
        metrics['final'] = config.final_metrics(metrics, config.parse_best_epoch(log))
        evaluation = config.parse_final_evaluation(log)
        if evaluation:
            metrics['evaluation'] = evaluation
        return metrics

    def checkpoint_folder(self) -> orm.FolderData | None:
        """The latest intermediate checkpoint, as a folder to resume from."""
        folder = getattr(self, '_temporary_folder', None)
        if folder is None or not Path(folder).is_dir():
            return None
        directory = Path(folder)
        latest = latest_checkpoint([p.name for p in directory.iterdir() if p.is_file()])
        if latest is None:
            return None
        checkpoint = orm.FolderData()
        checkpoint.base.repository.put_object_from_file(str(directory / latest), latest)
        return checkpoint

    def build_model(self, model_file: str, metrics: dict[str, Any]) -> PotentialModel:
        """The model with its extensions, checkpoint and LAMMPS export, and how it was trained."""
        inputs = self.node.inputs
        options = self._options()
        architecture = (options.get('architecture') or {}).get('name') or config.architecture_name(
            inputs.parameters.get_dict()
        )
        cutoff = config.read_cutoff(options)
        if 'initial_model' in inputs:
            # fine-tuning keeps the architecture hypers of the checkpoint
            cutoff = inputs.initial_model.base.attributes.get('cutoff', cutoff)
        files = set(self.retrieved.base.repository.list_object_names())
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            repository = self.retrieved.base.repository
            (tmp / MODEL_FILE).write_bytes(repository.get_object_content(model_file, 'rb'))
            lammps_error = metatomic_export_problem(tmp / MODEL_FILE)
            if lammps_error:
                self.logger.warning(f'{MODEL_FILE} is no LAMMPS-ready model: {lammps_error}')
            checkpoint = None
            if CHECKPOINT_FILE in files:
                checkpoint = tmp / CHECKPOINT_FILE
                checkpoint.write_bytes(repository.get_object_content(CHECKPOINT_FILE, 'rb'))
            extensions = None
            if EXTENSIONS_DIR in files:
                extensions = tmp / EXTENSIONS_DIR
                repository.copy_tree(extensions, EXTENSIONS_DIR)
            return PotentialModel.from_files(
                tmp / MODEL_FILE,
                engine='metatrain',
                architecture=architecture,
                species=inputs.training.species,
                cutoff=cutoff if cutoff is not None else 0.0,
                dtype=inputs.dtype.value,
                seed=inputs.seed.value,
                checkpoint_file=checkpoint,
                extensions_dir=extensions,
                metrics={**metrics['final'], **_evaluation(metrics)},
                extra={'lammps_export_error': lammps_error},
                lammps_file=None if lammps_error else tmp / MODEL_FILE,
            )


def _evaluation(metrics: dict[str, Any]) -> dict[str, Any]:
    return {'evaluation': metrics['evaluation']} if 'evaluation' in metrics else {}
