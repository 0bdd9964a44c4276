"""The ``ase`` labelling engine: a whole dataset in one job with an ASE calculator.

- :mod:`.engine`: the engine (one ``trainspot.ase.label`` job);
- :mod:`.calculation` / :mod:`.parser`: the job (``AseLabelCalculation``) and its parser;
- :mod:`.core`: calculator specs and the labelling loop (no AiiDA), run by the executable
  ``trainspot-ase-label`` (:mod:`aiida_trainspot.runners.ase_label`).
"""
