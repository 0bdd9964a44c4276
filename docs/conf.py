"""Sphinx configuration of the aiida-trainspot documentation."""

project = 'aiida-trainspot'
author = 'aiida-trainspot developers'
copyright = '2026, aiida-trainspot developers'

extensions = ['myst_parser', 'sphinx.ext.mathjax']
myst_enable_extensions = ['dollarmath', 'colon_fence']
source_suffix = {'.md': 'markdown'}
exclude_patterns = ['_build']
html_theme = 'furo'
html_title = 'aiida-trainspot'
