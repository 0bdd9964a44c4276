"""Exploration: molecular dynamics with a committee member's potential to find new frames.

Each engine is a CalcJob that takes a :class:`~aiida_trainspot.training.model.PotentialModel`, the
starting frames (a :class:`~aiida_trainspot.data.PESData`) and an MD protocol, runs one
trajectory per starting frame and returns the sampled frames, unlabelled, with the metadata that
says where each comes from (``run_id``, ``step``, ``source_frame``, target ``temperature`` and
``pressure``, ``ensemble``, ``engine``). Engines:

- ``ase`` (:mod:`.ase_calculation`, entry point ``trainspot.ase.md``): ASE molecular dynamics
  with the model's ASE calculator (optionally plus Grimme D2 dispersion), one job for all the
  starting frames; runs wherever PyTorch runs (laptops, CI). Its pure core is :mod:`.md`
  (protocol, ensembles, integrators, abort rules, D2, the run loop) and its executable
  ``trainspot-ase-md`` (:mod:`aiida_trainspot.runners.ase_md`).

Importing this package imports no AiiDA.
"""
