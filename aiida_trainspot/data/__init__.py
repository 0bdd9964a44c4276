"""Datasets of atomic configurations (PESData) over a columnar HDF5 frame store.

The frame store (:mod:`.columns`, :mod:`.convert`, :mod:`.store`, :mod:`.splits`,
:mod:`.validation`) imports no AiiDA; :class:`PESData` and the calcfunctions of
:mod:`.operations` wrap it for the provenance graph. ``PESData`` is imported
lazily, so runners on compute nodes that need only the store never load AiiDA.
Importing this package does not load an AiiDA profile.
"""

from typing import Any

__all__ = ('PESData',)


def __getattr__(name: str) -> Any:
    if name == 'PESData':
        from .pesdata import PESData

        return PESData
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
