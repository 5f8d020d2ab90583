"""The plans' random draws: counter-based, stateless, the same on every numpy version.

A plan must be a pure function of (seed, epoch) that no library upgrade can change: every rank
recomputes it, a resumed run must get the same pairs, and Table IV depends on it. numpy promises
that for its bit generators' raw output, not for ``Generator`` methods (``permutation``,
``integers``, ``choice`` may change algorithm between releases, NEP 19). So the plans draw from
their own documented function, computed vectorised in numpy uint64 (wrap-around arithmetic only):

- ``mix(z)``: the SplitMix64 finaliser (Steele, Lea & Flood 2014; the output function of
  ``java.util.SplittableRandom``): ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
  z *= 0x94D049BB133111EB; z ^= z >> 31`` -- a bijection of 64-bit words.
- ``key(seed, epoch, stream)`` = ``s(s(s(seed) ^ epoch) ^ stream)`` with ``s(x) = mix(x + G)``,
  ``G = 0x9E3779B97F4A7C15``; every integer taken mod 2**64.
- ``bits(key, n)[i]`` = ``mix(key + (i + 1) * G)``: the i-th output of SplitMix64 seeded with
  ``key``. Draw i depends on (seed, epoch, stream, i) only, never on how many draws came before;
  within one stream the n words are distinct (``i -> key + (i + 1) G`` and ``mix`` are bijections).
- ``uniform``: ``(bits >> 11) * 2**-53``, a double in [0, 1) (exact in IEEE arithmetic).
- ``below(key, bound)``: ``floor(uniform * bound)``, an integer in [0, bound); its bias is below
  ``bound / 2**53`` (1.6e-9 for 14M), no rejection loop, so draw i is one word.
- ``permutation(key, n)``: the indices sorted by their draws ``bits(key, n)``: by the top
  64 - L bits, then by index (L = bit_length(n - 1)); the keys are distinct, so the sorted order is
  unique whatever sort algorithm a numpy release uses, and every permutation is equally likely
  up to the hash's quality and ties of the top bits (2**(L - 64) per pair: 2**-40 at 14M).

The plans' streams (``stream`` values) are listed where they are drawn (intervention.py,
balanced.py). A golden-digest test pins each plan kind's output for a fixed seed.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

_MASK = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_TWO53 = 1.0 / 9007199254740992.0


def _mix_int(z: int) -> int:
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def mix(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser on a uint64 array, in place (and returned)."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(_M1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_M2)
    z ^= z >> np.uint64(31)
    return z


def key(seed: int, epoch: int, stream: int) -> int:
    """The 64-bit key of one stream of draws of (seed, epoch)."""
    h = _mix_int(int(seed) + GAMMA)
    h = _mix_int((h ^ (int(epoch) & _MASK)) + GAMMA)
    return _mix_int((h ^ (int(stream) & _MASK)) + GAMMA)


CHUNK = 1 << 18  # draws computed this many at a time: 2 MiB temporaries stay in cache and in malloc's heap
# (whole-array temporaries of a 14M plan are 112 MiB each, every one a fresh mmap the kernel zero-fills:
# 1.5 s of a 14M ``below`` went to that; by chunks 0.3 s, the same numbers)


def _chunks(n: int):
    for lo in range(0, n, CHUNK):
        yield lo, min(n, lo + CHUNK)


def _draws_of(k: int, z: np.ndarray) -> np.ndarray:
    """uint64 ``z`` holding i + 1 -> draws i of stream ``k`` (``mix(k + (i + 1) * GAMMA)``), in place."""
    z *= np.uint64(GAMMA)
    z += np.uint64(k)
    return mix(z)


def _bits_into(k: int, lo: int, z: np.ndarray) -> np.ndarray:
    """Draws lo, lo + 1, ... of stream ``k`` written into ``z`` (uint64), in place."""
    z[:] = np.arange(lo + 1, lo + 1 + len(z), dtype=np.uint64)
    return _draws_of(k, z)


def bits(k: int, n: int) -> np.ndarray:
    """(n,) uint64: draw i of stream ``k`` is ``mix(k + (i + 1) * GAMMA)``."""
    z = np.empty(n, np.uint64)
    for lo, hi in _chunks(n):
        _bits_into(k, lo, z[lo:hi])
    return z


def uniform(k: int, n: int) -> np.ndarray:
    """(n,) float64 in [0, 1): the top 53 bits of each draw."""
    u = np.empty(n, np.float64)
    z = np.empty(min(n, CHUNK), np.uint64)
    for lo, hi in _chunks(n):
        w = _bits_into(k, lo, z[:hi - lo])
        w >>= np.uint64(11)
        np.multiply(w, _TWO53, out=u[lo:hi])
    return u


def below(k: int, bound, n: Optional[int] = None) -> np.ndarray:
    """(n,) int64: draw i uniform in [0, bound[i]) (bound >= 1; a scalar bound needs n)."""
    scalar = np.ndim(bound) == 0
    bound = int(bound) if scalar else np.asarray(bound, np.int64)
    n = int(n) if scalar else len(bound)
    r = np.empty(n, np.int64)
    z = np.empty(min(n, CHUNK), np.uint64)
    for lo, hi in _chunks(n):
        w = _bits_into(k, lo, z[:hi - lo])
        u = (w >> np.uint64(11)).astype(np.float64)
        if scalar:
            u *= bound * _TWO53  # exact: a power-of-two scaling of an integer below 2**53
            np.minimum(u.astype(np.int64), bound - 1, out=r[lo:hi])
        else:  # (inline: the same steps behind a helper function ran 1.6x slower at 14M, by when temporaries are freed)
            b = bound[lo:hi]
            u *= _TWO53
            u *= b
            np.minimum(u.astype(np.int64), b - 1, out=r[lo:hi])
    return r


def permutation(k: int, n: int) -> np.ndarray:
    """(n,) int64: a random permutation of 0..n-1, the indices ordered by their draws.

    Sorted as words (the draw's top 64 - L bits, then the index in the low L = bit_length(n - 1)
    bits; one in-place sort of uint64 values, as fast as numpy's own shuffle): the words are
    distinct, so the order is unique whatever sort algorithm numpy uses. Two indices whose draws
    share their top 64 - L bits (probability 2**(L - 64) per pair) keep their index order.
    """
    low = max(int(n - 1).bit_length(), 1)
    mask = np.uint64((1 << low) - 1)
    z = np.empty(n, np.uint64)
    for lo, hi in _chunks(n):
        w = _bits_into(k, lo, z[lo:hi])
        w &= ~mask
        w |= np.arange(lo, hi, dtype=np.uint64)
    z.sort()
    z &= mask
    return z.view(np.int64)


# -- per-sample augmentation: draws at given indices, and one sample's own stream ------------------------
def at(k: int, index) -> np.ndarray:
    """uint64 draws ``index[0], index[1], ...`` of stream ``k``: ``at(k, [i])[0] == bits(k, n)[i]``."""
    z = np.asarray(index, dtype=np.int64).astype(np.uint64)
    z += np.uint64(1)
    return _draws_of(k, z)


def uniform_at(k: int, index) -> np.ndarray:
    """float64 in [0, 1): draw ``index[m]`` of stream ``k`` for each m (as ``uniform``)."""
    return (at(k, index) >> np.uint64(11)).astype(np.float64) * _TWO53


def below_at(k: int, index, bound: int) -> np.ndarray:
    """int64 in [0, bound): draw ``index[m]`` of stream ``k`` for each m (as ``below``)."""
    u = (at(k, index) >> np.uint64(11)).astype(np.float64)
    u *= int(bound) * _TWO53
    return np.minimum(u.astype(np.int64), int(bound) - 1)


def child(k: int, index: int) -> int:
    """The key of sub-stream ``index`` of stream ``k``: draw ``index`` of ``k`` (``bits(k, n)[index]``). For
    one ``k`` distinct indices give distinct keys (a bijection); chained, ``child(child(k, a), b)`` keys a
    pair (a, b) with no arithmetic between a and b, so no two pairs share a key by construction."""
    return _mix_int(int(k) + (int(index) + 1) * GAMMA)


def sample_key(seed: int, epoch: int, stream: int, index: int) -> int:
    """The key of sample ``index``'s own stream in ``stream`` of (seed, epoch): draw ``index`` of that stream."""
    return child(key(seed, epoch, stream), index)


class Stream:
    """Draws 0, 1, 2, ... of one stream, one at a time: the few draws of one sample's augmentation (a crop
    window's up to ten tries) or of one batch's Mixup / CutMix, with the methods of numpy's Generator
    that they call (random, uniform, integers, normal, beta)."""

    def __init__(self, k: int):
        self.k, self.n = int(k) & _MASK, 0

    def random(self) -> float:
        """A double in [0, 1): the next draw's top 53 bits (as ``uniform``)."""
        self.n += 1
        return (_mix_int(self.k + self.n * GAMMA) >> 11) * _TWO53

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def integers(self, low: int, high: int) -> int:
        """An integer in [low, high) (as ``below``)."""
        return low + min(int(self.random() * (high - low)), high - low - 1)

    def normal(self) -> float:
        """A standard normal (Box-Muller from two draws, the cosine half): in Python floats, so only the
        platform's libm (log, cos: within an ulp) can touch it, never a numpy release."""
        r = math.sqrt(-2.0 * math.log(1.0 - self.random()))  # 1 - u in (0, 1]: no log(0)
        return r * math.cos(2.0 * math.pi * self.random())

    def log_gamma(self, shape: float) -> float:
        """The log of a Gamma(shape, 1) draw (Marsaglia & Tsang 2000: squeeze-and-reject on a normal;
        shape < 1 as Gamma(shape + 1) * U ** (1 / shape), their section 6, kept in logs so small shapes
        cannot underflow to 0)."""
        if shape <= 0:
            raise ValueError(f"gamma shape must be > 0, got {shape}")
        if shape < 1:
            return self.log_gamma(shape + 1.0) + math.log(1.0 - self.random()) / shape
        d = shape - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        while True:  # accepts with probability > 0.95 for every shape >= 1
            x = self.normal()
            v = 1.0 + c * x
            if v <= 0.0:
                continue
            v = v * v * v
            u = 1.0 - self.random()
            if u < 1.0 - 0.0331 * x ** 4 or math.log(u) < 0.5 * x * x + d * (1.0 - v + math.log(v)):
                return math.log(d * v)

    def beta(self, a: float, b: float) -> float:
        """A Beta(a, b) draw in [0, 1]: X / (X + Y) of two Gamma draws, X ~ Gamma(a), Y ~ Gamma(b)."""
        lx, ly = self.log_gamma(a), self.log_gamma(b)
        return 1.0 / (1.0 + math.exp(ly - lx)) if ly - lx < 700 else 0.0
