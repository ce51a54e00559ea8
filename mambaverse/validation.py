"""Up-front checks of config values, shared by every domain: one-line errors naming the key and the range."""
from __future__ import annotations

import math
import numbers

from .errors import ConfigError


def check_int(key: str, value, low: int, error=ConfigError) -> None:
    """``value`` must be an integer (not a bool) >= ``low``; else ``error`` names ``key`` and the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise error(f"{key}: got {value!r}; expected an integer >= {low}")


def check_fraction(key: str, value, low: float = 0.0, high: float = 1.0, high_open: bool = False,
                   error=ConfigError) -> None:
    """``value`` must be a finite number in [low, high] (or [low, high) with ``high_open``)."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and low <= value and (value < high if high_open else value <= high))
    if not ok:
        raise error(f"{key}: got {value!r}; expected a number in [{low}, {high}{')' if high_open else ']'}")
