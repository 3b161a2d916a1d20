"""NumPy and pandas values as the plain Python values events are made of.

ML code hands the producers API what its libraries return: ``np.float64`` metrics, ``np.bool_``
comparisons, ``np.int64`` seeds, ``pd.Timestamp`` times, arrays and Series of names. Every public
method of the API converts its arguments here, once, at its edge (:func:`plain_arguments`), so
nothing inside the library meets a NumPy or pandas value. Neither library is imported: their
values are recognised by the module of their type, so a job without pandas pays nothing.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
_PLAIN_TYPES = (type(None), bool, int, float, str, bytes)
_MISSING_TYPE_NAMES = frozenset({"NAType", "NaTType"})  # pd.NA, pd.NaT


def _from_numpy_or_pandas(value: object) -> bool:
    return type(value).__module__.split(".", 1)[0] in ("numpy", "pandas")


def plain(value: Any) -> Any:
    """``value`` with NumPy and pandas values replaced by plain ones, in containers too.

    NumPy scalars become ``bool``/``int``/``float``/``str``; arrays, Series, Index and pandas
    arrays become lists; ``pd.NA`` and ``pd.NaT`` become None; ``pd.Timestamp`` becomes a
    ``datetime``, and a naive datetime is taken as UTC. Tuples stay tuples, sets become lists.
    DataFrames, paths, functions and anything else are returned as they are.
    """
    if type(value) in _PLAIN_TYPES:
        return value
    if _from_numpy_or_pandas(value):
        if type(value).__name__ in _MISSING_TYPE_NAMES:
            return None
        if isinstance(value, datetime):  # pd.Timestamp
            return plain(value.to_pydatetime())  # type: ignore[attr-defined]
        if hasattr(value, "tolist"):  # NumPy scalars and arrays, Series, Index, pandas arrays
            return plain(value.tolist())
        return value
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, Mapping):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(plain(item) for item in value)
    if isinstance(value, list | set | frozenset):
        return [plain(item) for item in value]
    return value


def optional_number(value: Any) -> float | None:
    """A number where a nullable one is meant: None and NaN (NumPy's and pandas' missing) are None."""
    value = plain(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def plain_arguments(*kept: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a public API function so that every argument but ``kept`` goes through :func:`plain`.

    ``kept`` names the arguments that take tables or arrays as data (a DataFrame, predictions).
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def converted(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            for name, value in bound.arguments.items():
                if name not in kept:
                    bound.arguments[name] = plain(value)
            return function(*bound.args, **bound.kwargs)

        return converted

    return decorate
