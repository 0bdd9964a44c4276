"""Labelling: energies, forces and stresses of the frames of a dataset.

The stage (:mod:`.workchain`) hands the dataset to an engine found by entry point
(``trainspot.labelling.engines``, contract in :mod:`.engine`) and returns the frames it
labelled and the frames that failed, with the reason. Shipped engines, one sub-package each:

- ``qe`` (:mod:`.qe`): pw.x through aiida-quantumespresso's ``PwBaseWorkChain``, one per frame,
  one set of DFT settings per campaign;
- ``ase`` (:mod:`.ase`): a whole dataset in one job with an ASE calculator (EMT, Lennard-Jones,
  Tersoff or any importable ``module:Class``); the cheap oracle of the tests and benchmarks.

Importing this package imports no AiiDA.
"""
