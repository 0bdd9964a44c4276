"""The ``qe`` labelling engine: Quantum ESPRESSO's pw.x through aiida-quantumespresso.

- :mod:`.engine`: the engine (one ``PwBaseWorkChain`` per frame) and its calcfunctions;
- :mod:`.dft` and :mod:`.settings`: one set of DFT settings per campaign (no AiiDA in
  :mod:`.dft`), the vacuum every frame gets;
- :mod:`.pseudos`: pseudopotential families (SSSP, or the tests' own);
- :mod:`.labels`: pw.x results as dataset labels (units and signs).
"""
