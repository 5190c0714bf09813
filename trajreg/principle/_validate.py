"""Array conversion and argument checks shared by :mod:`trajreg.principle`.

Every public function of the package converts its inputs with these helpers, so
that numpy arrays, numpy memmaps, Python sequences and torch tensors (on any
device, with or without ``requires_grad``) are all accepted and every
computation runs in float64. torch is never imported here: a tensor is
recognised by the module its type comes from.

All checks raise :class:`ValueError` with a message that names the argument.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "allowed_violations",
    "as_1d",
    "as_2d",
    "as_delta",
    "as_float",
    "as_int_labels",
    "as_loss_curve",
    "as_lrs",
    "check_eps",
    "check_nonnegative",
    "check_same_length",
    "to_numpy",
]


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert ``x`` (array-like or torch tensor) to a float64 numpy array.

    >>> to_numpy([1, 2], "x").dtype
    dtype('float64')
    """
    if _is_torch_tensor(x):
        t = x.detach().cpu()
        try:
            x = t.numpy()
        except (TypeError, RuntimeError):  # e.g. bfloat16 has no numpy dtype
            x = t.double().numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from err
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real, got a complex array")
    try:
        return np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}") from err


def as_1d(x: Any, name: str) -> np.ndarray:
    """Float64 1-D array; raises if ``x`` is not one-dimensional."""
    arr = to_numpy(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def as_2d(x: Any, name: str) -> np.ndarray:
    """Float64 2-D array; raises if ``x`` is not two-dimensional."""
    arr = to_numpy(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows are flat parameter vectors), "
                         f"got shape {arr.shape}")
    return arr


def as_float(x: Any, name: str, *, allow_nan: bool = False, allow_inf: bool = True) -> float:
    """A Python float from a scalar (Python, numpy or 0-d/1-element tensor)."""
    arr = to_numpy(x, name)
    if arr.size != 1 or arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    value = float(arr.reshape(()))
    if math.isnan(value) and not allow_nan:
        raise ValueError(f"{name} must not be nan")
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_same_length(**arrays: np.ndarray) -> int:
    """Common length of the given 1-D arrays (raises naming them if they differ)."""
    lengths = {name: arr.shape[0] for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{name} has length {n}" for name, n in lengths.items())
        raise ValueError(f"arguments must have the same length: {desc}")
    return next(iter(lengths.values()))


def check_nonnegative(arr: np.ndarray, name: str) -> None:
    """Raise if ``arr`` has a negative entry (nan entries are let through)."""
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative (it is a squared norm)")


def as_lrs(lrs: Any, name: str = "lrs") -> np.ndarray:
    """Learning rates as float64 1-D array; each must be finite and > 0."""
    arr = as_1d(lrs, name)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got minimum {arr.min()!r}")
    return arr


def as_delta(delta: Any, n: int, name: str = "delta") -> np.ndarray:
    """``delta`` as a float64 array of length ``n`` (a scalar is broadcast).

    Entries must be finite.
    """
    arr = to_numpy(delta, name)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    elif arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be a scalar or a 1-D array of length {n}, "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def check_eps(eps: Any) -> float:
    """``eps`` as a float in [0, 1)."""
    value = as_float(eps, "eps")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {value}")
    return value


def allowed_violations(n: int, eps: float) -> int:
    """floor(eps * n): the number of steps allowed to violate the principle.

    ``eps * n`` is rounded to 9 decimals before the floor so that a decimal
    ``eps`` behaves as written (0.29 * 100 is 28.999999999999996 in floating
    point; this returns 29).

    >>> allowed_violations(100, 0.29), allowed_violations(19, 0.05)
    (29, 0)
    """
    return math.floor(round(eps * n, 9))


def as_int_labels(x: Any, name: str) -> np.ndarray:
    """Integer labels (e.g. epoch numbers) as an int64 1-D array."""
    if _is_torch_tensor(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return arr.astype(np.int64)
    as_float_arr = to_numpy(arr, name)
    if not np.all(np.isfinite(as_float_arr)) or np.any(as_float_arr != np.round(as_float_arr)):
        raise ValueError(f"{name} must hold integers")
    return as_float_arr.astype(np.int64)


def as_loss_curve(full_loss: Any, epoch_ends: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check a per-epoch loss curve; return (F as float64, epoch_ends as int64).

    ``full_loss`` = [F_0, ..., F_E] (F_0 at initialisation, F_k after epoch k),
    ``epoch_ends`` = cumulative step counts at the end of epochs 1..E, length E,
    strictly increasing, first entry >= 1. Non-finite losses are allowed.

    >>> as_loss_curve([1.0, 0.5], [10])[1].tolist()
    [10]
    """
    F = as_1d(full_loss, "full_loss")
    if F.shape[0] < 2:
        raise ValueError("full_loss must hold F_0 and at least one epoch, "
                         f"got length {F.shape[0]}")
    ends = as_int_labels(epoch_ends, "epoch_ends")
    if ends.shape[0] != F.shape[0] - 1:
        raise ValueError(f"epoch_ends must have length len(full_loss) - 1 = {F.shape[0] - 1}, "
                         f"got {ends.shape[0]}")
    if ends[0] < 1 or np.any(np.diff(ends) <= 0):
        raise ValueError("epoch_ends must be strictly increasing cumulative step counts "
                         "starting at >= 1")
    return F, ends
