"""Calcfunctions over :class:`PESData`, so that derived datasets keep their provenance."""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from .pesdata import PESData
from .splits import DEFAULT_FRACTIONS


@calcfunction
def concatenate_datasets(**datasets: PESData) -> PESData:
    """Join datasets in the alphabetical order of their link labels."""
    return PESData.concatenate([datasets[key] for key in sorted(datasets)])


@calcfunction
def subset_dataset(dataset: PESData, indices: orm.List) -> PESData:
    """The frames of ``dataset`` at ``indices`` (integers) or where a boolean list is True."""
    return dataset.subset(indices.get_list())


@calcfunction
def assign_split(dataset: PESData, seed: orm.Int, fractions: orm.Dict | None = None) -> PESData:
    """Give every frame without a split one (sticky, seeded, stratified by generation method)."""
    return dataset.assign_split(
        seed.value, fractions.get_dict() if fractions else DEFAULT_FRACTIONS
    )


@calcfunction
def add_labels(dataset: PESData, labelled: PESData, indices: orm.List) -> PESData:
    """Copy the labels of ``labelled`` (frame k) onto frame ``indices[k]`` of ``dataset``."""
    return merge_columns_of(dataset, labelled, indices.get_list(), ('energy', 'forces', 'stress'))


@calcfunction
def add_columns(dataset: PESData, source: PESData, indices: orm.List, names: orm.List) -> PESData:
    """Copy columns ``names`` of ``source`` (frame k) onto frame ``indices[k]`` of ``dataset``."""
    return merge_columns_of(dataset, source, indices.get_list(), tuple(names.get_list()))


def merge_columns_of(
    dataset: PESData, source: PESData, indices: list[int], names: tuple[str, ...]
) -> PESData:
    """Set columns ``names`` of ``dataset`` at ``indices`` to those of ``source``'s frames."""
    if len(indices) != len(source):
        raise ValueError(f'{len(indices)} indices given for a source of {len(source)} frames')
    available = [n for n in names if n in source.column_names]
    if not available:
        raise ValueError(f'the source dataset has none of the columns {list(names)}')
    columns = source.get_columns(available)
    target_atoms = dataset.n_atoms_per_frame()[indices] if indices else columns.n_atoms
    if not (target_atoms == columns.n_atoms).all():
        raise ValueError('the source frames do not have the atom counts of the frames they label')
    return dataset.with_columns(
        indices,
        {n: columns.frame[n] for n in available if n in columns.frame},
        {n: columns.atom[n] for n in available if n in columns.atom},
        {n: columns.mask(n) for n in available},
    )
