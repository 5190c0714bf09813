"""CountSketch estimates of the per-step quantities (docs/principle.md, section 13).

The record mode ``sketch`` keeps, for every iterate x_t, a CountSketch S x_t of
k numbers: coordinate i of the global flat parameter vector is added, with sign
sigma(i) in {+1, -1}, to bucket h(i) in [0, k):

    (S x)_j = sum_{i : h(i) = j} sigma(i) x_i.

Inner products of sketches estimate inner products of vectors without bias:
E <S x, S y> = <x, y> over the random choice of (h, sigma), with

    Var <S x, S y> = (||x||^2 ||y||^2 + <x, y>^2 - 2 sum_i x_i^2 y_i^2) / k

(:func:`countsketch_variance`). S is linear, so S(x_t - x*) = S x_t - S x* and
S v_t = (S x_t - S x_{t+1}) / eta_t come from the stored sketches, and
:func:`sketch_quantities` estimates D_t, a_t (and s_t, unless the exact value
recorded online is passed) from them.

h and sigma are deterministic functions of the global flat index and a seed
(:func:`hash32`), computed with integer operations that never leave
[0, 2^63) and so can be reproduced bit for bit with torch int64 tensors.
Because they depend only on (index, seed), the sketch of a concatenation is the
sum of the sketches of its parts (parameters sharded across processes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from trajreg.principle._validate import (
    _is_torch_tensor,
    as_1d,
    as_lrs,
    check_nonnegative,
    check_same_length,
    to_numpy,
)
from trajreg.principle.quantities import _trajectory_quantities_compute

__all__ = [
    "SketchQuantities",
    "countsketch",
    "countsketch_variance",
    "hash32",
    "hash_buckets",
    "hash_signs",
    "sketch_quantities",
    "sketch_relative_error",
    "sketch_sd",
]

_MASK32 = 0xFFFFFFFF
_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B
STREAM_BUCKET = 1
STREAM_SIGN = 2


def _mul32(x: Any, m: int) -> Any:
    """(x * m) mod 2^32 for x in [0, 2^32), without any intermediate >= 2^49."""
    return (x * (m & 0xFFFF) + (((x * (m >> 16)) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Any) -> Any:
    """A bijective 32-bit mixer (the "lowbias32" constants of C. Wellons, 2018)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, _MUL2)
    return x ^ (x >> 16)


def _as_index(index: Any) -> np.ndarray:
    if _is_torch_tensor(index):
        index = index.detach().cpu().numpy()
    arr = np.asarray(index)
    if not (np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_):
        raise ValueError(f"index must hold integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 2**63:
        raise ValueError("index must be < 2^63")
    arr = arr.astype(np.int64)
    if arr.size and int(arr.min()) < 0:
        raise ValueError("index must be non-negative (a global flat parameter index)")
    return arr


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) <= _MASK32:
        raise ValueError(f"seed must be in [0, 2^32), got {seed}")
    return int(seed)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {type(k).__name__}")
    if not 1 <= int(k) < 2**31:
        raise ValueError(f"k must be in [1, 2^31), got {k}")
    return int(k)


def _hash32(idx: np.ndarray, seed: int, stream: int) -> np.ndarray:
    key = _mix32(_mix32(seed) ^ stream)  # Python ints: exact
    hi = idx >> 32
    lo = idx & _MASK32
    if hi.size == 0 or int(hi.min()) == int(hi.max()):
        key2 = _mix32(key ^ (int(hi.flat[0]) if hi.size else 0))
    else:
        key2 = _mix32(np.int64(key) ^ hi)
    return _mix32(np.asarray(key2, dtype=np.int64) ^ lo)


def hash32(index: Any, seed: int, stream: int) -> np.ndarray:
    """32-bit hash of global flat indices: int64 values in [0, 2^32).

    The exact integer recipe (every value non-negative and below 2^49, so it
    is the same in numpy int64, torch int64 or Python ints; ``>>`` is a
    logical shift on these non-negative values)::

        M = 0xFFFFFFFF
        mul32(x, m) = (x * (m & 0xFFFF) + (((x * (m >> 16)) & 0xFFFF) << 16)) & M
                      # = (x * m) mod 2^32 for 0 <= x, m < 2^32
        mix32(x)    = x ^= x >> 16;  x = mul32(x, 0x7FEB352D);
                      x ^= x >> 15;  x = mul32(x, 0x846CA68B);
                      x ^= x >> 16;  return x
        key  = mix32(mix32(seed) ^ stream)      # seed in [0, 2^32); stream 1 or 2
        key2 = mix32(key ^ (i >> 32))           # high word of the index
        h    = mix32(key2 ^ (i & M))            # low word of the index

    mix32 is a bijection of [0, 2^32) (xor-shifts and odd multipliers; the
    constants are C. Wellons' "lowbias32", 2018). Stream 1 gives the buckets
    (:func:`hash_buckets`), stream 2 the signs (:func:`hash_signs`).

    Args:
        index: non-negative integers (global flat parameter indices), any shape.
        seed: integer in [0, 2^32).
        stream: integer in [0, 2^32).

    >>> hash32(np.arange(3), 0, 1).tolist()
    [604019821, 3412962653, 3431222951]
    """
    idx = _as_index(index)
    if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) or \
            not 0 <= int(stream) <= _MASK32:
        raise ValueError(f"stream must be an integer in [0, 2^32), got {stream!r}")
    return _hash32(idx, _check_seed(seed), int(stream))


def hash_buckets(index: Any, k: int, seed: int) -> np.ndarray:
    """Bucket h(i) in [0, k) of each global flat index i: (hash32(i, seed, 1) * k) >> 32.

    The product is below 2^63 for k < 2^31, so the recipe is exact in int64
    (see :func:`hash32`). Returns int64, the shape of ``index``.

    >>> hash_buckets(np.arange(6), 4, 0).tolist()
    [0, 3, 3, 1, 0, 2]
    """
    k_int = _check_k(k)
    h = hash32(index, seed, STREAM_BUCKET)
    return (h * k_int) >> 32


def hash_signs(index: Any, seed: int) -> np.ndarray:
    """Sign sigma(i) in {+1, -1} of each global flat index i: 1 - 2 (hash32(i, seed, 2) >> 31).

    Returns int8, the shape of ``index``.

    >>> hash_signs(np.arange(6), 0).tolist()
    [1, 1, -1, 1, 1, -1]
    """
    h = hash32(index, seed, STREAM_SIGN)
    return (1 - 2 * (h >> 31)).astype(np.int8)


def countsketch(x: Any, k: int, seed: int, offset: int = 0) -> np.ndarray:
    """CountSketch of a vector (or of each row of a block): (S x)_j = sum_{h(i)=j} sigma(i) x_i.

    Entry x[m] has global flat index offset + m, so a vector split into
    consecutive parts is sketched part by part: countsketch(x, k, seed) equals
    countsketch(x[:m], k, seed) + countsketch(x[m:], k, seed, offset=m).
    Each bucket is summed in float64 in index order (np.bincount, O(d)). The
    two sides agree bit for bit whenever every partial sum is exact in float64,
    e.g. when all entries are multiples of 2^-m and the sum of |x_i| in a
    bucket stays below 2^(53-m); otherwise they agree to rounding (about
    1e-16 times the sum of |x_i| in the bucket): float64 addition is not
    associative, so no float64 sketch can be split-invariant for every input.

    Args:
        x: shape (d,) or (n, d) (rows sketched alike); converted to float64.
        k: number of buckets, in [1, 2^31).
        seed: integer in [0, 2^32).
        offset: global flat index of x's first entry (>= 0).

    Returns:
        float64, shape (k,) or (n, k).

    >>> countsketch([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 4, 0).tolist()
    [6.0, 4.0, -6.0, -1.0]
    """
    arr = to_numpy(x, "x")
    if arr.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D (rows), got shape {arr.shape}")
    k_int = _check_k(k)
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
    d = arr.shape[-1]
    idx = np.arange(int(offset), int(offset) + d, dtype=np.int64)
    buckets = hash_buckets(idx, k_int, seed)
    signs = hash_signs(idx, seed).astype(np.float64)
    if arr.ndim == 1:
        return np.bincount(buckets, weights=signs * arr, minlength=k_int)
    out = np.empty((arr.shape[0], k_int), dtype=np.float64)
    for row in range(arr.shape[0]):
        out[row] = np.bincount(buckets, weights=signs * arr[row], minlength=k_int)
    return out


def countsketch_variance(x: Any, y: Any, k: int) -> float:
    """Var <S x, S y> over random (h, sigma): (||x||^2 ||y||^2 + <x,y>^2 - 2 sum x_i^2 y_i^2) / k.

    Derivation: <S x, S y> = sum_{i,j} sigma_i sigma_j x_i y_j [h_i = h_j] =
    <x, y> + Z with Z = sum_{i != j} sigma_i sigma_j [h_i = h_j] x_i y_j, so the
    estimate is unbiased (E sigma_i sigma_j = 0 for i != j). With independent
    uniform buckets and signs, E[sigma_i sigma_j sigma_k sigma_l] is 1 when
    (k, l) = (i, j) or (j, i) and 0 otherwise (i != j, k != l), and
    P(h_i = h_j) = 1/k, so

        Var = (1/k) sum_{i != j} (x_i^2 y_j^2 + x_i y_i x_j y_j)
            = (1/k) (||x||^2 ||y||^2 - sum x_i^2 y_i^2 + <x,y>^2 - sum x_i^2 y_i^2).

    For x = y: Var ||S x||^2 = 2 (||x||^4 - sum x_i^4) / k.

    >>> countsketch_variance([1.0, 0.0], [0.0, 1.0], 4)
    0.25
    """
    xa = as_1d(x, "x")
    ya = as_1d(y, "y")
    check_same_length(x=xa, y=ya)
    k_int = _check_k(k)
    xy = float(np.dot(xa, ya))
    return (float(np.dot(xa, xa)) * float(np.dot(ya, ya)) + xy * xy
            - 2.0 * float(np.sum(xa * xa * ya * ya))) / k_int


def sketch_relative_error(cos: Any, k: int) -> np.ndarray:
    """Approximate relative sd of a sketched inner product: sqrt(1 + 1/cos^2) / sqrt(k).

    From :func:`countsketch_variance` without its last term (negligible for
    vectors spread over many coordinates): sd(<S x, S y>) / |<x, y>| =
    sqrt((||x||^2 ||y||^2 + <x,y>^2) / k) / |<x,y>| with cos = <x,y> / (||x|| ||y||).
    For a_t, cos is the cosine c_t between x_t - x* and v_t. inf where cos = 0.

    >>> round(float(sketch_relative_error(0.2, 4096)), 4)
    0.0797
    """
    c = to_numpy(cos, "cos")
    k_int = _check_k(k)
    with np.errstate(divide="ignore"):
        return np.sqrt(1.0 + 1.0 / (c * c)) / math.sqrt(k_int)


def sketch_sd(a: Any, D: Any, s: Any, k: int) -> np.ndarray:
    """Upper bound on the standard deviation of a sketched a_t: sqrt((D_t s_t + a_t^2) / k).

    :func:`countsketch_variance` for x = x_t - x*, y = v_t, without its last
    term -2 sum_i x_i^2 y_i^2 / k (<= 0), so the bound is tight when the
    vectors are spread over many coordinates. It applies to
    a_u_t = eta_t a_t with s_u in place of s, and to the margin
    a_t - delta_t s_t when s_t is exact. Computed from sketched D and a it is
    itself an estimate. ``D`` may have one extra trailing entry.

    >>> sketch_sd([3.0], [4.0, 0.0], [4.0], 25).tolist()
    [1.0]
    """
    a_arr = as_1d(a, "a")
    D_arr = as_1d(D, "D")
    s_arr = as_1d(s, "s")
    if D_arr.shape[0] == a_arr.shape[0] + 1:
        D_arr = D_arr[:-1]
    check_same_length(a=a_arr, D=D_arr, s=s_arr)
    check_nonnegative(D_arr, "D")
    check_nonnegative(s_arr, "s")
    k_int = _check_k(k)
    return np.sqrt((D_arr * s_arr + a_arr * a_arr) / k_int)


@dataclass(frozen=True, eq=False)
class SketchQuantities:
    """Sketch estimates for a block of iterates x_t, ..., x_{t+n}.

    Attributes:
        D: shape (n+1,), ||S x_i - S x*||^2, unbiased for D_i.
        a: shape (n,), <S x_i - S x*, S v_i>, unbiased for a_i.
        s: shape (n,), the exact s_i when given, else ||S v_i||^2 (unbiased).
        a_u: shape (n,), eta_i a_i.
        s_u: shape (n,), eta_i^2 s_i.
        cos: shape (n,), a_i / sqrt(D_i s_i) (nan where D_i s_i = 0); a ratio
            of estimates, consistent but not unbiased.
    """

    D: np.ndarray
    a: np.ndarray
    s: np.ndarray
    a_u: np.ndarray
    s_u: np.ndarray
    cos: np.ndarray


def sketch_quantities(sxs: Any, lrs: Any, sx_star: Any, s: Any = None) -> SketchQuantities:
    """Estimates of D, a, s, a_u, s_u and the cosine from sketched iterates.

    The formulas of :func:`trajreg.principle.trajectory_quantities` applied to
    the sketches (S is linear: S(x_t - x*) = S x_t - S x*, S u_t = S x_t - S x_{t+1}):

        D_hat_t = ||S x_t - S x*||^2,   a_hat_t = <S x_t - S x*, S v_t>,
        s_hat_t = ||S v_t||^2,          S v_t = (S x_t - S x_{t+1}) / eta_t,

    each unbiased, with the variance of :func:`countsketch_variance`. s_t is
    cheap to record exactly online; pass it as ``s`` to use it instead of
    s_hat (then s_u = eta^2 s and the cosine uses the exact s). Blocks overlap
    by one row exactly as for trajectory_quantities.

    Args:
        sxs: shape (n+1, k), sketches S x_t, ..., S x_{t+n} (same k, seed).
        lrs: shape (n,), learning rates; finite and > 0.
        sx_star: shape (k,), the sketch of the reference point.
        s: optional shape (n,), exact s_t = ||v_t||^2.

    >>> q = sketch_quantities([[3.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [0.5, 0.5], [0.0, 0.0])
    >>> q.D.tolist(), q.a.tolist(), q.s.tolist(), q.cos.tolist()
    ([9.0, 1.0, 0.0], [12.0, 2.0], [16.0, 4.0], [1.0, 1.0])
    """
    sx = to_numpy(sxs, "sxs")
    if sx.ndim != 2 or sx.shape[0] < 1:
        raise ValueError(f"sxs must be 2-D with at least one row (rows are sketches), "
                         f"got shape {sx.shape}")
    star = as_1d(sx_star, "sx_star")
    if star.shape[0] != sx.shape[1]:
        raise ValueError(f"sx_star has length {star.shape[0]} but the sketches in sxs have "
                         f"length {sx.shape[1]}")
    lrs_arr = as_lrs(lrs)
    if lrs_arr.shape[0] != sx.shape[0] - 1:
        raise ValueError(f"lrs must have one entry per step: sxs has {sx.shape[0]} rows, "
                         f"so lrs needs length {sx.shape[0] - 1}, got {lrs_arr.shape[0]}")
    q = _trajectory_quantities_compute(sx, lrs_arr, star)
    s_out, s_u = q.s, q.s_u
    if s is not None:
        s_out = as_1d(s, "s")
        check_same_length(s=s_out, lrs=lrs_arr)
        check_nonnegative(s_out, "s")
        s_u = lrs_arr**2 * s_out
    denom = q.D[:-1] * s_out
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = q.a / np.sqrt(denom)
    cos = np.where(denom == 0, np.nan, cos)
    return SketchQuantities(D=q.D, a=q.a, s=s_out, a_u=q.a_u, s_u=s_u, cos=cos)
