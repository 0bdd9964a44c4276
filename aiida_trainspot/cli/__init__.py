"""The ``aiida-trainspot`` command line interface."""

from .main import cli

__all__ = ('cli',)
