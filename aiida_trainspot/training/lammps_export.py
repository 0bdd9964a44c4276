"""Trained models as the files LAMMPS' pair styles load (no AiiDA import).

- MACE: ``pair_style mace`` loads a TorchScript ``LAMMPS_MACE`` wrapper of the model, which
  ``mace_create_lammps_model model.model`` writes as ``model.model-lammps.pt``.
  :func:`export_mace` builds the same file with the same pieces as that command (MACE's
  ``LAMMPS_MACE`` and e3nn's ``jit.compile``, imported from ``mace.cli.create_lammps_model``),
  without its command line: the command asks on stdin which head to take when a model has
  several, which nothing can answer in a daemon or a parser.
- metatrain: ``mtt train -o model.pt`` already writes an exported metatomic ``AtomisticModel``,
  the file ``pair_style metatomic`` loads (with the ``extensions/`` folder of compiled
  extensions beside it); :func:`metatomic_export_problem` checks that a file is one.
- :func:`evaluate_mace_export`: energy and forces of an exported MACE model on a frame, called
  as ``pair_style mace`` calls it, so an export can be checked against the model without LAMMPS.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = (
    'LAMMPS_SUFFIX',
    'evaluate_mace_export',
    'export_mace',
    'mace_export_name',
    'mace_head',
    'metatomic_export_problem',
)

#: What ``mace_create_lammps_model`` appends to the model's file name.
LAMMPS_SUFFIX = '-lammps.pt'


def mace_export_name(model_filename: str) -> str:
    """The export's file name, ``mace_create_lammps_model``'s: ``<model file>-lammps.pt``."""
    return f'{model_filename}{LAMMPS_SUFFIX}'


def mace_head(heads: Sequence[str | None] | None) -> str | None:
    """The head the export evaluates: the one MACE's ASE calculator takes by default.

    One head: that one; several: the one named ``default`` (any case). LAMMPS then runs the
    head every other stage (ASE MD, evaluation) predicts with. Raises when no head is the
    default: which one to take is the user's choice, not ours.
    """
    heads = list(heads or [None])
    if len(heads) == 1:
        return heads[0]
    defaults = [head for head in heads if str(head).lower() == 'default']
    if not defaults:
        raise ValueError(
            f'the MACE model has heads {heads} and none is `default`: convert it by hand with '
            '`mace_create_lammps_model --head <head>`'
        )
    return defaults[0]


def export_mace(model_file: str | Path, output: str | Path, dtype: str = 'float64') -> Path:
    """Write the ``pair_style mace`` file of a MACE ``.model`` file to ``output``; return it.

    As ``mace_create_lammps_model`` (libtorch format): the model is loaded on the CPU, cast to
    ``dtype`` (``float64`` or ``float32``; the model's training dtype keeps LAMMPS' energies
    those of the ASE calculator), wrapped in ``LAMMPS_MACE`` with :func:`mace_head`'s head and
    compiled to TorchScript.
    """
    import torch
    from mace.cli.create_lammps_model import LAMMPS_MACE, jit

    if dtype not in ('float64', 'float32'):
        raise ValueError(f'dtype: {dtype!r} is not float64 or float32')
    model = torch.load(str(model_file), map_location='cpu', weights_only=False)
    model = (model.double() if dtype == 'float64' else model.float()).to('cpu')
    head = mace_head(getattr(model, 'heads', None))
    wrapper = LAMMPS_MACE(model, head=head) if head is not None else LAMMPS_MACE(model)
    output = Path(output)
    with warnings.catch_warnings():
        # TorchScript's notice about MACE's own annotations: not the user's to act on, and it
        # would print once per member in the campaign's console
        warnings.filterwarnings('ignore', 'The TorchScript type system', UserWarning)
        jit.compile(wrapper).save(str(output))
    return output


def metatomic_export_problem(model_file: str | Path) -> str | None:
    """Why ``model_file`` is not an exported metatomic model LAMMPS can load (None if it is).

    metatomic's own check (``check_atomistic_model``): the file is an exported
    ``AtomisticModel`` made with versions of torch and metatomic this environment can load.
    """
    from metatomic.torch import check_atomistic_model

    try:
        check_atomistic_model(str(model_file))
    except (RuntimeError, ValueError) as exception:
        lines = str(exception).strip().splitlines() or ['not a metatomic model']
        # the message names the file by its (temporary) path: keep its name only
        return lines[0].replace(str(model_file), Path(model_file).name)
    return None


def evaluate_mace_export(export_file: str | Path, atoms: Any) -> tuple[float, Any]:
    """Energy (eV) and forces (eV/Å) of ``atoms`` from an exported MACE model, as LAMMPS asks.

    ``pair_style mace`` calls the TorchScript model with one graph of the atoms (``positions``,
    ``cell``, ``node_attrs``, ``edge_index``, ``shifts``, ``unit_shifts``, ``batch``, ``ptr``,
    ``weight``, ``energy``, ``forces``), a mask of the local atoms and whether to compute the
    virial, and takes ``total_energy_local`` and ``forces``. The graph here is MACE's own
    (``AtomicData.from_config``, as its ASE calculator builds it) with every atom local:
    periodic images enter through the edge shifts, as in LAMMPS without ghost atoms.
    """
    import numpy as np
    import torch
    from mace import data as mace_data
    from mace.tools import torch_tools, utils

    model = torch.jit.load(str(export_file), map_location='cpu')
    dtype = model.r_max.dtype
    numbers = [int(z) for z in model.atomic_numbers.tolist()]
    with torch_tools.default_dtype(dtype):
        config = mace_data.config_from_atoms(atoms)
        graph = mace_data.AtomicData.from_config(
            config, z_table=utils.AtomicNumberTable(numbers), cutoff=float(model.r_max)
        )
    n_atoms = len(atoms)
    inputs = {
        'positions': graph['positions'].to(dtype),
        'cell': graph['cell'].to(dtype),
        'node_attrs': graph['node_attrs'].to(dtype),
        'edge_index': graph['edge_index'],
        'shifts': graph['shifts'].to(dtype),
        'unit_shifts': graph['unit_shifts'].to(dtype),
        'batch': torch.zeros(n_atoms, dtype=torch.long),
        'ptr': torch.tensor([0, n_atoms], dtype=torch.long),
        'weight': torch.ones(1, dtype=dtype),
        'energy': torch.zeros(1, dtype=dtype),
        'forces': torch.zeros((n_atoms, 3), dtype=dtype),
    }
    mask = torch.ones(n_atoms, dtype=dtype)
    output = model(inputs, mask, False)
    energy = float(output['total_energy_local'].detach().sum())
    forces = np.asarray(output['forces'].detach().cpu().numpy(), dtype=float)
    return energy, forces
