"""The ``ase`` exploration engine: ASE molecular dynamics with the member's calculator.

- :mod:`.engine`: the engine (jobs of consecutive runs);
- :mod:`.calculation` / :mod:`.parser`: the job (``AseMdCalculation``, ``trainspot.ase.md``) and
  its parser; the executable ``trainspot-ase-md`` (:mod:`aiida_trainspot.runners.ase_md`) runs
  :mod:`aiida_trainspot.exploration.md`.
"""
