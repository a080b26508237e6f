"""Strict JSON for every file and stdout line the project writes: no NaN or Infinity tokens.

Python's ``json`` writes ``NaN`` and ``Infinity``, which strict parsers (browsers' ``JSON.parse``, jq, most
languages' libraries) refuse. A value that is not a finite number is written as ``null``; the code that computes a
metric says why it is missing (a ``withheld`` or ``undefined`` reason beside it), this module only guarantees the
file parses everywhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, numpy values as Python ones, tuples and paths plain."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    import numpy as np

    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return finite(float(obj))
    if isinstance(obj, np.ndarray):
        return finite(obj.tolist())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that can only produce strict JSON (``allow_nan=False`` after :func:`finite`)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def loads_strict(text: str) -> Any:
    """Parse refusing NaN and Infinity tokens (what a strict parser does); for tests and readers of old files."""
    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)
