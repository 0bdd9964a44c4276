"""Datasets of atomic configurations (PESData) over a columnar HDF5 frame store.

The frame store (:mod:`.columns`, :mod:`.convert`, :mod:`.store`, :mod:`.splits`,
:mod:`.validation`) imports no AiiDA; :class:`PESData` and the calcfunctions of
:mod:`.operations` wrap it for the provenance graph. Importing this package does
not load an AiiDA profile.
"""

from .pesdata import PESData

__all__ = ('PESData',)
