"""The metatrain training engine: ``mtt train`` as a :class:`~..base.TrainingCalculation`.

Any metatrain architecture (PET by default, SOAP-BPNN, ...): options built from defaults and
the user's ``parameters`` (:mod:`.config`), the CalcJob (:mod:`.calculation`) and its parser
(:mod:`.parser`), which stores the exported ``model.pt`` with its extensions and checkpoint as
a :class:`~aiida_trainspot.training.model.PotentialModel`.
"""
