"""YAML protocols of the work chains (read with importlib.resources)."""
