"""The active-learning loop (``TrainsPotWorkChain``) and its helpers; no stage imports it."""
