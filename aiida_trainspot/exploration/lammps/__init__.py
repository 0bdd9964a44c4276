"""The ``lammps`` exploration engine: one aiida-lammps ``lammps.raw`` job per MD run.

- :mod:`.engine`: the engine, the potentials (classical or the member's LAMMPS export) and the
  frames back from the dumps;
- :mod:`.input`: the LAMMPS script, data file and dump reading (no AiiDA).
"""
