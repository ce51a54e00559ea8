"""PEP 517 build backend of mambaverse: setuptools' own (``setuptools.build_meta``), unchanged, minus one banner.

The domain folders (``kernels/``, ``genomics/``, ``audio/``, ``vision/``) install as ``mambaverse.*`` through
``package-dir``; for that layout setuptools' editable install uses an import hook and, on every
``pip install -e .``, prints an "Editable installation" notice (a ``setuptools.warnings.InformationOnly``, not a
deprecation) that recent pip shows even with ``-q``. Nothing in the project can act on it, so editable builds
filter that one notice; every other warning of setuptools still shows.
"""
from __future__ import annotations

import warnings

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 - the whole backend interface
from setuptools.build_meta import __all__  # noqa: F401


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    """setuptools' ``build_editable`` without its "Editable installation" notice."""
    try:
        from setuptools.warnings import InformationOnly
    except ImportError:  # an older setuptools: nothing to filter
        InformationOnly = Warning
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Editable installation", category=InformationOnly)
        return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
