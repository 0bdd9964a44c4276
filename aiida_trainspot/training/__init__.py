"""Committee training: the model data type, the shared training CalcJob, MACE and metatrain."""
