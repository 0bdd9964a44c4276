"""Labelling engines: compute energies, forces and stresses of the frames of a dataset.

Each engine is a CalcJob (or a workflow of them) that takes a
:class:`~aiida_trainspot.data.PESData` and returns the frames it labelled and the
frames that failed, with the reason. Engines:

- ``ase`` (:mod:`.ase_calculation`, entry point ``trainspot.ase.label``): labels a
  whole dataset in one job with an ASE calculator (EMT, Lennard-Jones, Tersoff or
  any importable ``module:Class``); the cheap oracle of the tests and benchmarks
  and the engine of semi-empirical users. Its pure core is :mod:`.ase_engine` and
  its executable ``trainspot-ase-label`` (:mod:`aiida_trainspot.runners.ase_label`).

Importing this package imports no AiiDA.
"""
