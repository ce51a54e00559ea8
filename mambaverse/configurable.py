"""``@builder``: model classes whose constructor arguments are their saved config.

A builder is a model class whose constructor takes every hyperparameter explicitly; ``@builder`` records
the arguments of each instance in ``model.config`` (``{"builder": class name, **arguments}``) and lists
the class in ``BUILDERS`` so that ``from_pretrained`` can rebuild it by name. This module sits below the
backbones so that they can be decorated without importing the registry (which sits above them).
"""
from __future__ import annotations

import functools
import inspect

from .errors import ConfigError

BUILDERS: dict[str, type] = {}


def builder(cls):
    """Class decorator: record constructor arguments in ``self.config``; register ``cls`` by its name.

    The constructor's parameters (or its declared ``__init__.__signature__``) must all be passable by
    keyword; they are what ``model.config`` records and ``from_pretrained`` passes back.

    Raises ConfigError if a different class of the same name is already registered."""
    if BUILDERS.get(cls.__name__, cls) is not cls and BUILDERS[cls.__name__].__qualname__ != cls.__qualname__:
        raise ConfigError(f"builder {cls.__name__!r} is registered twice ({BUILDERS[cls.__name__].__module__} "
                          f"and {cls.__module__})")
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        # by keyword: a constructor may declare its signature (``__signature__``) and take ``**kwargs``
        init(self, **arguments)
        # tuples become lists so that the config equals its YAML round trip
        self.config = {"builder": cls.__name__,
                       **{k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()}}

    cls.__init__ = recording_init
    BUILDERS[cls.__name__] = cls
    return cls
