"""Argument checks shared by every public entry point: one wording, one rule per kind of argument.

Integers: any integral type is accepted (``int``, ``numpy.int64``, a 0-d integer ``torch`` tensor)
and returned as a Python ``int``; ``bool`` and floats (``1.5``, but also ``2.0``) are refused, so a
typo never silently truncates. Floats: any real number (``int``, ``float``, numpy and 0-d tensors),
returned as a Python ``float``; ``bool`` is refused.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Optional

import numpy as np

__all__ = ["check_bool", "check_float", "check_int", "check_log_base", "check_optional_int", "check_prefix", "join_key"]


def check_int(value: Any, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as a Python ``int``, or a ``ValueError`` naming ``name`` and what it must be.

    Example:
        >>> import numpy as np
        >>> check_int(np.int64(3), "num_bins", minimum=1)
        3
        >>> check_int(1.5, "every_n_epochs", minimum=1)
        Traceback (most recent call last):
        ...
        ValueError: every_n_epochs must be an integer >= 1, received 1.5 (float)
    """
    if isinstance(value, bool) or not _is_integral(value):
        raise ValueError(
            f"{name} must be {_int_wording(minimum, maximum)}, received {value!r} ({type(value).__name__})"
        )
    number = operator.index(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {_int_wording(minimum, maximum)}, received {number}")
    return number


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a Python ``bool``: ``True``/``False`` or a NumPy bool, never a string or a number.

    ``bool("False")`` is ``True``, so a string from a config file would silently switch a feature on.

    Example:
        >>> check_bool(False, "miller_madow")
        False
        >>> check_bool("False", "miller_madow")
        Traceback (most recent call last):
        ...
        ValueError: miller_madow must be True or False, received 'False' (str)
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be True or False, received {value!r} ({type(value).__name__})")


def check_prefix(value: Any, name: str = "prefix") -> str:
    """A key prefix: a string without a leading or trailing ``/`` (``""``: keys without a prefix).

    Example:
        >>> check_prefix("infomem/")
        Traceback (most recent call last):
        ...
        ValueError: prefix must be a string without a leading or trailing '/', received 'infomem/'
    """
    if not isinstance(value, str) or value.startswith("/") or value.endswith("/"):
        raise ValueError(f"{name} must be a string without a leading or trailing '/', received {value!r}")
    return value


def join_key(prefix: str, *parts: str) -> str:
    """A logged key: ``prefix`` and ``parts`` joined by ``/``, the prefix left out when it is empty.

    Example:
        >>> join_key("infomem", "net.0", "entropy"), join_key("", "entropy")
        ('infomem/net.0/entropy', 'entropy')
    """
    return "/".join((prefix, *parts) if prefix else parts)


def check_optional_int(
    value: Any, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None
) -> Optional[int]:
    """`check_int`, with ``None`` allowed (and returned)."""
    if value is None:
        return None
    try:
        return check_int(value, name, minimum, maximum)
    except ValueError as error:
        raise ValueError(str(error).replace(" must be ", " must be None or ", 1)) from None


def check_float(
    value: Any,
    name: str,
    *,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a Python ``float`` within the given bounds, or a ``ValueError`` naming ``name``.

    Example:
        >>> check_float(0.25, "range_quantile", minimum=0.0, maximum=0.5, exclusive_maximum=True)
        0.25
    """
    wording = _float_wording(minimum, maximum, exclusive_minimum, exclusive_maximum, finite)
    if isinstance(value, bool) or not _is_real(value):
        raise ValueError(f"{name} must be {wording}, received {value!r} ({type(value).__name__})")
    number = float(value)
    bad = math.isnan(number) or (finite and math.isinf(number))
    if minimum is not None:
        bad = bad or (number <= minimum if exclusive_minimum else number < minimum)
    if maximum is not None:
        bad = bad or (number >= maximum if exclusive_maximum else number > maximum)
    if bad:
        raise ValueError(f"{name} must be {wording}, received {number!r}")
    return number


def check_log_base(base: Any) -> Optional[float]:
    """A logarithm base: ``None`` (nats) or a finite positive number other than 1.

    Example:
        >>> check_log_base(2), check_log_base(None)
        (2.0, None)
    """
    if base is None:
        return None
    wording = "None (nats) or a finite number > 0 other than 1, e.g. 2 for bits"
    if isinstance(base, bool) or not _is_real(base):
        raise ValueError(f"base must be {wording}, received {base!r} ({type(base).__name__})")
    number = float(base)
    if not math.isfinite(number) or number <= 0 or number == 1:
        raise ValueError(f"base must be {wording}, received {number!r}")
    return number


def _is_integral(value: Any) -> bool:
    if isinstance(value, numbers.Integral):
        return True
    if _is_tensor(value):
        import torch

        return (
            value.ndim == 0 and not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool
        )
    return False


def _is_real(value: Any) -> bool:
    if isinstance(value, numbers.Real):
        return True
    if _is_tensor(value):
        return value.ndim == 0 and (value.is_floating_point() or _is_integral(value))
    return False


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _int_wording(minimum: Optional[int], maximum: Optional[int]) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"


def _float_wording(
    minimum: Optional[float], maximum: Optional[float], exclusive_minimum: bool, exclusive_maximum: bool, finite: bool
) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive_minimum else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<' if exclusive_maximum else '<='} {maximum:g}")
    kind = "a finite number" if finite else "a number"
    return kind + (" " + " and ".join(parts) if parts else "")
