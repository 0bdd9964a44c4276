"""Sphinx configuration of the aiida-trainspot documentation."""

import os
import tempfile

project = 'aiida-trainspot'
author = 'aiida-trainspot developers'
copyright = '2026, aiida-trainspot developers'

extensions = ['myst_parser', 'sphinx.ext.mathjax', 'aiida.sphinxext']

# aiida.sphinxext documents the process specs and needs a loaded profile: a temporary one, in a
# temporary configuration folder, so that building the docs never touches a user's profiles.
os.environ['AIIDA_PATH'] = tempfile.mkdtemp(prefix='trainspot-docs-')
from aiida import load_profile  # noqa: E402
from aiida.storage.sqlite_temp import SqliteTempBackend  # noqa: E402

load_profile(SqliteTempBackend.create_profile('trainspot-docs'), allow_switch=True)
myst_enable_extensions = ['dollarmath', 'colon_fence']
source_suffix = {'.md': 'markdown'}
exclude_patterns = ['_build']
html_theme = 'furo'
html_title = 'aiida-trainspot'
