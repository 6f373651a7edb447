"""JSON has no NaN or Infinity: results written for jq, JavaScript or any strict reader carry null there."""

from __future__ import annotations

import math

import numpy as np


def finite_or_null(o):
    """`o` with every NaN / ±Infinity (Python or numpy floats, inside dicts, lists, tuples and arrays) replaced by
    None, and numpy floats and arrays turned into Python floats and lists."""
    if isinstance(o, dict):
        return {k: finite_or_null(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite_or_null(v) for v in o]
    if isinstance(o, np.ndarray):
        return finite_or_null(o.tolist())
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o
