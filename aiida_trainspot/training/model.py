"""``PotentialModel`` (``trainspot.model``): a trained potential and what is needed to use it.

The repository holds the model file under ``model/``, an optional training
checkpoint under ``checkpoint/`` (what fine-tuning and warm starts read), the
files needed at load time under ``extensions/`` (e.g. metatomic's compiled
extensions) and, under ``lammps/``, the model as LAMMPS' pair style loads it
(MACE: the ``mace_create_lammps_model`` file ``<model>-lammps.pt``; metatrain:
the exported metatomic model, which needs ``extensions/`` beside it too).
Attributes record the engine, architecture, species, cutoff, dtype, seed, final
metrics and ``lammps_filename`` (None without an export; the training parsers
record why in ``lammps_export_error`` when the export failed), so models are
queryable and later stages never guess.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiida import orm

from aiida_trainspot.data.paths import path_inside, plain_filename

from .loader import DTYPES, ENGINES, load_calculator

MODEL_DIR = 'model'
CHECKPOINT_DIR = 'checkpoint'
EXTENSIONS_DIR = 'extensions'
LAMMPS_DIR = 'lammps'
#: Attributes that hold the plain name of a file in the node's repository.
FILENAME_ATTRIBUTES = (
    'model_filename',
    'checkpoint_filename',
    'lammps_filename',
    'compiled_model_filename',
)


def check_filenames(attributes: Mapping[str, Any]) -> None:
    """Refuse file-name attributes that are not plain names (``../x``, ``/x``, ``a/b``, ``''``).

    ``model_filename`` is required; the others may be None.

    :raises ValueError: naming the attribute and the offending name.
    """
    for key in FILENAME_ATTRIBUTES:
        value = attributes.get(key)
        if value is not None or key == 'model_filename':
            plain_filename(value, key)


class PotentialModel(orm.Data):
    """A trained interatomic potential (MACE or metatrain) with its metadata."""

    @classmethod
    def from_files(
        cls,
        model_file: str | Path,
        *,
        engine: str,
        architecture: str,
        species: Sequence[str],
        cutoff: float,
        dtype: str,
        seed: int | None = None,
        checkpoint_file: str | Path | None = None,
        extensions_dir: str | Path | None = None,
        metrics: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        lammps_file: str | Path | None = None,
    ) -> PotentialModel:
        """Create an (unstored) model from files on disk.

        ``lammps_file``: the model as LAMMPS loads it (see the module docstring). A MACE
        model without one is converted when a LAMMPS exploration draws it; a metatrain
        model file is its own export.
        """
        if engine not in ENGINES:
            raise ValueError(f'engine: unknown engine {engine!r}; choose one of {list(ENGINES)}')
        if dtype not in DTYPES:
            raise ValueError(f'dtype: unknown dtype {dtype!r}; choose one of {list(DTYPES)}')
        model_file = Path(model_file)
        plain_filename(model_file.name, 'model_file')
        if checkpoint_file is not None:
            plain_filename(Path(checkpoint_file).name, 'checkpoint_file')
        if lammps_file is not None:
            plain_filename(Path(lammps_file).name, 'lammps_file')
        node = cls()
        repository = node.base.repository
        repository.put_object_from_file(str(model_file), f'{MODEL_DIR}/{model_file.name}')
        if checkpoint_file is not None:
            checkpoint_file = Path(checkpoint_file)
            repository.put_object_from_file(
                str(checkpoint_file), f'{CHECKPOINT_DIR}/{checkpoint_file.name}'
            )
        if (
            extensions_dir is not None
            and Path(extensions_dir).is_dir()
            and any(Path(extensions_dir).iterdir())
        ):
            repository.put_object_from_tree(str(extensions_dir), EXTENSIONS_DIR)
        if lammps_file is not None:
            lammps_file = Path(lammps_file)
            repository.put_object_from_file(str(lammps_file), f'{LAMMPS_DIR}/{lammps_file.name}')
        attributes = {
            'engine': engine,
            'architecture': architecture,
            'species': sorted(set(species)),
            'cutoff': float(cutoff),
            'dtype': dtype,
            'seed': seed,
            'model_filename': model_file.name,
            'checkpoint_filename': checkpoint_file.name if checkpoint_file is not None else None,
            'lammps_filename': lammps_file.name if lammps_file is not None else None,
            'metrics': dict(metrics or {}),
            **dict(extra or {}),
        }
        check_filenames(attributes)
        for key, value in attributes.items():
            node.base.attributes.set(key, value)
        return node

    def _validate(self) -> bool:
        """Before storing: the file-name attributes are plain names (:func:`check_filenames`)."""
        super()._validate()
        check_filenames({key: self.base.attributes.get(key, None) for key in FILENAME_ATTRIBUTES})
        return True

    # attributes -----------------------------------------------------------------
    @property
    def engine(self) -> str:
        """'mace' or 'metatrain'."""
        return self.base.attributes.get('engine')

    @property
    def species(self) -> list[str]:
        """Chemical symbols the model was trained on."""
        return list(self.base.attributes.get('species'))

    @property
    def seed(self) -> int | None:
        """Seed of the training run."""
        return self.base.attributes.get('seed')

    @property
    def model_filename(self) -> str:
        """Name of the model file."""
        return self.base.attributes.get('model_filename')

    @property
    def model_path(self) -> str:
        """Path of the model file in the node's repository."""
        return f'{MODEL_DIR}/{self.model_filename}'

    @property
    def checkpoint_filename(self) -> str | None:
        """Name of the checkpoint file, if one is stored."""
        return self.base.attributes.get('checkpoint_filename')

    @property
    def lammps_filename(self) -> str | None:
        """Name of the stored LAMMPS export (None when the model has none)."""
        return self.base.attributes.get('lammps_filename', None)

    @property
    def lammps_export_error(self) -> str | None:
        """Why the training could not export the model for LAMMPS (None: it did, or never tried)."""
        return self.base.attributes.get('lammps_export_error', None)

    @property
    def has_extensions(self) -> bool:
        """Whether load-time extension files are stored."""
        return EXTENSIONS_DIR in self.base.repository.list_object_names()

    # files ------------------------------------------------------------------------
    def export(self, directory: str | Path) -> dict[str, Path | None]:
        """Write the model, checkpoint and extensions into ``directory``; return their paths.

        Every name comes from the node: each is checked to stay inside ``directory`` before
        anything is written (:func:`~aiida_trainspot.data.paths.path_inside`).

        :raises ValueError: naming the file name that would leave ``directory``.
        """
        directory = Path(directory)
        repository = self.base.repository
        paths: dict[str, Path | None] = {'model': None, 'checkpoint': None, 'extensions': None}
        name = plain_filename(self.model_filename, 'model_filename')
        paths['model'] = path_inside(directory, name)
        if self.checkpoint_filename:
            name = plain_filename(self.checkpoint_filename, 'checkpoint_filename')
            paths['checkpoint'] = path_inside(directory, name)
        if self.has_extensions:
            paths['extensions'] = path_inside(directory, EXTENSIONS_DIR)
            for root, _, names in repository.walk(EXTENSIONS_DIR):
                for name in names:
                    path_inside(directory, (root / name).as_posix(), 'extensions')
        directory.mkdir(parents=True, exist_ok=True)
        paths['model'].write_bytes(repository.get_object_content(self.model_path, 'rb'))
        if paths['checkpoint'] is not None:
            content = repository.get_object_content(
                f'{CHECKPOINT_DIR}/{self.checkpoint_filename}', 'rb'
            )
            paths['checkpoint'].write_bytes(content)
        if paths['extensions'] is not None:
            repository.copy_tree(paths['extensions'], EXTENSIONS_DIR)
        return paths

    def lammps_export(self) -> tuple[str, bytes] | None:
        """(file name, content) of what LAMMPS' pair style loads; None if there is none.

        The stored export; without one, a metatrain model's own file (``mtt train`` writes
        an exported metatomic model) unless its training found it unloadable
        (``lammps_export_error``), and, for MACE, None: its training ``.model`` does not load
        in LAMMPS (:func:`~aiida_trainspot.training.lammps_export.export_mace` converts it).
        """
        repository = self.base.repository
        if self.lammps_filename:
            name = plain_filename(self.lammps_filename, 'lammps_filename')
            return name, repository.get_object_content(f'{LAMMPS_DIR}/{name}', 'rb')
        if self.engine == 'metatrain' and not self.lammps_export_error:
            name = plain_filename(self.model_filename, 'model_filename')
            return name, repository.get_object_content(self.model_path, 'rb')
        return None

    def missing_lammps_export(self) -> str:
        """What to do about a model that has no LAMMPS export (for error messages)."""
        reason = (
            f' (its export failed: {self.lammps_export_error})' if self.lammps_export_error else ''
        )
        tool = '`mace_create_lammps_model`' if self.engine == 'mace' else 'metatrain (`mtt export`)'
        return (
            f'model <{self.pk}> ({self.engine}) has no LAMMPS export{reason}: export it with '
            f'{tool} and give the file as `PotentialModel.from_files(..., lammps_file=...)`'
        )

    def write_lammps_model(self, directory: str | Path) -> Path:
        """Write :meth:`lammps_export`'s file into ``directory``; return its path."""
        export = self.lammps_export()
        if export is None:
            raise ValueError(self.missing_lammps_export())
        path = path_inside(directory, export[0], 'lammps_filename')
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(export[1])
        return path

    @contextlib.contextmanager
    def calculator(self, device: str = 'cpu', dtype: str | None = None) -> Iterator[Any]:
        """Yield an ASE calculator for this model (files exported to a temporary folder)."""
        with tempfile.TemporaryDirectory() as tmp:
            paths = self.export(tmp)
            yield load_calculator(
                self.engine,
                paths['model'],
                device=device,
                dtype=dtype or self.base.attributes.get('dtype'),
                extensions_dir=paths['extensions'],
            )

    def __str__(self) -> str:
        attrs = self.base.attributes
        return (
            f'PotentialModel<{self.pk}>: {attrs.get("engine")} {attrs.get("architecture")} '
            f'species {attrs.get("species")} seed {attrs.get("seed")}'
        )
