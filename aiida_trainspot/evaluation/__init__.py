"""Committee evaluation: disagreement, true errors, calibration, diagnostics and selection.

This is the numerical core of the active-learning step, in plain numpy/scipy (no AiiDA
import), so that it can be tested on synthetic committees and run anywhere:

- :mod:`.disagreement`: committee mean and standard deviation, the disagreements
  :math:`\\delta_E` (eV/atom), :math:`\\delta_F` and :math:`\\delta_F^{max}` (eV/Å),
  :math:`\\delta_\\sigma` (eV/Å³), the true errors :math:`\\varepsilon_\\alpha` of the committee
  mean in the same units (and from them the members' RMS errors), and RMSE/MAE metrics
  (meV/atom, meV/Å, meV/Å³).
- :mod:`.calibration`: the fit :math:`\\delta_\\alpha \\approx a_\\alpha \\varepsilon_\\alpha`,
  thresholds :math:`\\tau_\\alpha = a_\\alpha \\varepsilon_{thr,\\alpha}`, a power-law
  alternative fitted by Gaussian likelihood, and TPR/PPV diagnostics of the criterion
  :math:`\\delta > \\tau` against the truth :math:`\\varepsilon > \\varepsilon_{thr}`.
- :mod:`.selection`: candidates (:math:`\\delta_\\alpha > \\tau_\\alpha` for any property),
  rejection of untrusted (unphysical) frames, thinning of near-duplicates from the same run
  and a seeded random choice of at most ``max_selected`` frames.
- :mod:`.learning_curve`: every iteration's committee scored on the same held-out frames, the
  learning curve whose points compare (the per-iteration validation frames change).

Data layout (that of :mod:`aiida_trainspot.data.columns`): frames of different sizes; per-frame
arrays have a leading dimension ``F``; per-atom arrays are concatenated over frames, ``n_atoms``
(``F``,) giving the count of each frame. Committee predictions carry a leading member dimension
``M``. Stresses are in Voigt order (xx, yy, zz, yz, xz, xy) with the ASE sign, in eV/Å³.
Property names are ``'energy'``, ``'forces'`` and ``'stress'`` throughout.
"""
