"""The MACE training engine: ``mace_run_train`` driven by a YAML configuration file.

* :mod:`.config` (no AiiDA import): the configuration (package defaults, the user's
  ``parameters``, what the calculation always sets), the keys MACE knows, and the
  reading of MACE's per-epoch results into metrics.
* :mod:`.calculation`: :class:`~.calculation.MaceTrainCalculation` (``trainspot.mace.train``).
* :mod:`.parser`: :class:`~.parser.MaceTrainParser` (``trainspot.mace.train``).
"""
