"""Datasets of atomic configurations (PESData) over a columnar HDF5 frame store."""
