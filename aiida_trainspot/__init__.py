"""AiiDA plugin that builds machine-learning interatomic potentials by active learning."""

__version__ = '0.1.0'
