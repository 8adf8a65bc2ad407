"""Random numbers that belong to a sample, not to the batch it happens to be in.

An attack's random start, Square's signs and the like are usually drawn from the global
generator for the batch in hand, so a sample's numbers depend on which samples share its batch
and in what order. The audit attacks each attack's survivors in batches, and on several
processes each rank attacks its own share of them: with batch-drawn numbers a sample would get
other (equally valid) numbers there, and the audit other results.

:class:`Draws` makes them a function of (seed, stream, sample key, element) alone: a
counter-based generator (a 32-bit integer hash, Wellons' ``lowbias32``, applied twice to the
sample's hashed key plus a Weyl sequence over the elements), computed with tensor ops on the
batch's device. The audit keys each sample by its index in the audit set and each attack run by
its place in the audit, so a sample gets the same numbers whatever its batch, batch size or
rank. Numbers shared by the whole batch (Square's window, which the reference draws once per
query for every sample) depend on the seed and stream only.

Without keys a :class:`Draws` draws from torch's global generator, as the attacks always did.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import torch

from cartl_core._runtime import memory_format_of

__all__ = ["Draws"]

_M32 = 0xFFFFFFFF
#: 2^32 / golden ratio: consecutive elements' counters spread over the whole 32-bit range.
_WEYL = 0x9E3779B9


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32), without int64 overflow (which torch leaves
    undefined): c in 16-bit halves keeps every product below 2^48."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32: a bijection of 32-bit values with near-ideal avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _stream_hash(seed: int, stream: tuple[int, ...]) -> int:
    digest = hashlib.blake2b(repr((seed, stream)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class Draws:
    """Random numbers for the rows of a batch. ``keys``: one int per row, the sample's identity
    (None: torch's global generator); ``stream``: which use of them (an attack, a restart, a
    query), so that no two uses see the same numbers."""

    keys: torch.Tensor | None = None
    seed: int = 0
    stream: tuple[int, ...] = ()

    @property
    def keyed(self) -> bool:
        return self.keys is not None

    def rows(self, idx: torch.Tensor) -> Draws:
        """The draws of the rows ``idx`` (a subset of the batch, in that order)."""
        if self.keys is None:
            return self
        return Draws(self.keys[idx], self.seed, self.stream)

    def at(self, *stream: int) -> Draws:
        """A sub-stream: independent numbers for another use by the same rows."""
        return Draws(self.keys, self.seed, (*self.stream, *stream))

    def _bits(self, per_row: int, device: torch.device) -> torch.Tensor:
        """(rows, per_row) int64 values uniform in [0, 2^32)."""
        assert self.keys is not None
        h = _stream_hash(self.seed, self.stream)
        keys = self.keys.to(device=device, dtype=torch.int64)
        row = _mix(_mix((keys & _M32) ^ (h & _M32)) ^ ((keys >> 32) & _M32) ^ (h >> 32))
        counter = (torch.arange(per_row, device=device, dtype=torch.int64) * _WEYL) & _M32
        return _mix(_mix((row[:, None] + counter[None, :]) & _M32))

    def uniform(self, like: torch.Tensor) -> torch.Tensor:
        """Uniform in (0, 1), shaped and typed like ``like`` (whose rows are the keys')."""
        if self.keys is None:
            return torch.rand_like(like)
        bits = self._bits(like[0].numel() if like.shape[0] else 0, like.device)
        return _shaped(_unit(bits), like)

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal, shaped and typed like ``like`` (Box-Muller on two uniforms)."""
        if self.keys is None:
            return torch.randn_like(like)
        n = like[0].numel() if like.shape[0] else 0
        u = _unit(self._bits(2 * n, like.device))
        z = torch.sqrt(-2.0 * torch.log(u[:, :n])) * torch.cos(2 * math.pi * u[:, n:])
        return _shaped(z, like)

    def signs(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """+-1 (float) of ``shape``, whose first dimension is the rows."""
        if self.keys is None:
            return torch.randint(0, 2, shape, device=device).float().mul_(2).sub_(1)
        per_row = math.prod(shape[1:]) if shape[0] else 0
        bits = self._bits(per_row, device)
        return ((bits >> 31).float() * 2 - 1).view(shape)

    def shared_ints(self, high: int, count: int = 1) -> list[int]:
        """``count`` ints in [0, high), the same for every row: they depend on the seed and
        stream only (computed on the host, so they cost no device sync)."""
        if self.keys is None:
            return [int(v) for v in torch.randint(0, high, (count,))]
        rng = random.Random(_stream_hash(self.seed, self.stream))
        return [rng.randrange(high) for _ in range(count)]


def _unit(bits: torch.Tensor) -> torch.Tensor:
    """32-bit values as floats in (0, 1): their top 24 bits, centred in their interval (never
    0, which Box-Muller's log cannot take)."""
    return ((bits >> 8).float() + 0.5) * 2.0**-24


def _shaped(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(rows, elements) values as ``like``'s shape, dtype and memory layout; element i is the
    i-th in logical order whatever the layout, so the layout does not change the numbers."""
    return values.view(like.shape).to(like.dtype).contiguous(memory_format=memory_format_of(like))
