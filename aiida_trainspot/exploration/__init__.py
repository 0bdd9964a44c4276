"""Exploration: molecular dynamics with a committee member's potential to find new frames.

The stage (:mod:`.workchain`) draws the plan (member, starting frames, temperatures, pressures,
seeds) and hands it to an engine found by entry point (``trainspot.exploration.engines``,
contract in :mod:`.engine`); it returns the sampled frames, unlabelled, with the metadata that
says where each comes from (``run_id``, ``step``, ``source_frame``, target ``temperature`` and
``pressure``, ``ensemble``, ``engine``). Shipped engines, one sub-package each:

- ``ase`` (:mod:`.ase`): ASE molecular dynamics with the model's ASE calculator (optionally plus
  Grimme D2 dispersion); runs wherever PyTorch runs (laptops, CI). Its pure core is :mod:`.md`
  (protocol, ensembles, integrators, abort rules, D2, the run loop);
- ``lammps`` (:mod:`.lammps`): aiida-lammps ``lammps.raw`` jobs.

Importing this package imports no AiiDA.
"""
