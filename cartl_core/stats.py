"""The statistics behind every reported accuracy and behind compare's choice.

An accuracy is a proportion of ``n`` samples, so it carries the binomial's noise. Every accuracy
the product reports gets a **Wilson score interval** (two-sided, :data:`CONFIDENCE`): unlike the
normal approximation (Wald) it stays inside [0, 1] and keeps close to its nominal coverage near 0
and 1, where robust and clean accuracies often lie; unlike Clopper-Pearson it is not conservative
(Clopper-Pearson covers more than asked, so its intervals are wider than the noise), and it needs
no beta quantiles, only the normal's.

Two candidates measured on the same samples are compared **paired**: only the samples where they
disagree carry information about which is better (the exact McNemar test, a sign test on the
discordant samples). :func:`sign_test` gives its one-sided p-value, exactly; :func:`holm` corrects
for several comparisons. Per-sample flags travel compactly as packed bits (:func:`pack_flags`).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from statistics import NormalDist

__all__ = [
    "CONFIDENCE",
    "INTERVAL_METHOD",
    "accuracy_interval",
    "discordant",
    "format_interval",
    "holm",
    "interval_text",
    "max_half_width",
    "min_resolvable",
    "pack_flags",
    "sign_test",
    "unpack_flags",
    "wilson_interval",
]

#: The confidence of every interval the product reports (two-sided).
CONFIDENCE = 0.95
#: How the intervals are computed, as outputs name it.
INTERVAL_METHOD = "wilson"


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1; got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The two-sided Wilson score interval of ``k`` successes in ``n`` trials; (0, 1) for n 0.

    Its lower end at ``confidence`` c is also the one-sided lower bound at (1 + c) / 2."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n; got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    # At k = 0 or n the formula is exact at 0 or 1; rounding must not leave it a hair off.
    low = 0.0 if k == 0 else max(0.0, (centre - spread) / scale)
    high = 1.0 if k == n else min(1.0, (centre + spread) / scale)
    return low, high


def accuracy_interval(accuracy: float, n: int, confidence: float = CONFIDENCE) -> list[float]:
    """:func:`wilson_interval` of an accuracy already divided by ``n`` (as ``[low, high]``, the
    shape stored in JSON); the count is recovered by rounding."""
    k = min(n, max(0, round(accuracy * n)))
    return list(wilson_interval(k, n, confidence))


def max_half_width(n: int, confidence: float = CONFIDENCE) -> float:
    """The widest half-width an accuracy over ``n`` samples can have (at 50%): what ``n``
    samples can resolve at best for one accuracy on its own."""
    if n <= 0:
        return 0.5
    z = _z(confidence)
    # Wilson at p = 1/2 is symmetric: half-width z * sqrt(1/(4n) + z^2/(4n^2)) / (1 + z^2/n).
    return z * math.sqrt(1 / (4 * n) + z * z / (4 * n * n)) / (1 + z * z / n)


def format_interval(interval: Sequence[float] | None, digits: int = 3) -> str:
    """``0.951-0.990``, or empty for none (an older result)."""
    if not interval:
        return ""
    return f"{interval[0]:.{digits}f}-{interval[1]:.{digits}f}"


def accuracy_cell(accuracy: float, interval: Sequence[float] | None) -> str:
    """``0.912 (.87-.94)``: an accuracy and its interval, short enough for a table."""
    if not interval:
        return f"{accuracy:.3f}"
    low, high = (f"{v:.2f}".removeprefix("0") for v in interval)
    return f"{accuracy:.3f} ({low}-{high})"


def interval_text(n: int | None = None) -> str:
    """What an interval is, as the outputs say it: ``95% Wilson interval, n = 200``."""
    base = f"{CONFIDENCE:.0%} Wilson interval"
    return base if n is None else f"{base}, n = {n}"


# --------------------------------------------------------------------------- paired comparison


def discordant(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int]:
    """On the same samples: (right only for ``a``, right only for ``b``)."""
    if len(a) != len(b):
        raise ValueError(f"paired flags need the same samples; got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return only_a, only_b


def sign_test(wins: int, losses: int) -> float:
    """The exact one-sided McNemar p-value that the side with ``wins`` is the better one: the
    chance of at least ``wins`` of the ``wins + losses`` discordant samples going its way if
    each were a fair coin, P(X >= wins), X ~ Binomial(wins + losses, 1/2). 1.0 with no
    discordant samples."""
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must be >= 0; got {wins}, {losses}")
    n = wins + losses
    if n == 0:
        return 1.0
    # Integers throughout: exact for any n, and Python's int / int rounds once, correctly.
    tail = sum(math.comb(n, i) for i in range(wins, n + 1))
    return min(1.0, tail / (1 << n))


def min_resolvable(discordant_samples: int, alpha: float) -> int | None:
    """The smallest margin (wins - losses) among ``discordant_samples`` discordant samples that
    :func:`sign_test` calls significant at level ``alpha``, or None where even a clean sweep is
    not (too few samples disagree)."""
    n = discordant_samples
    # Walk down from a clean sweep, the tail P(X >= wins) growing, until it passes alpha.
    term, tail, found = 1, 0, None  # term = C(n, wins)
    for wins in range(n, n // 2, -1):
        tail += term
        if tail / (1 << n) > alpha:
            break
        found = wins
        term = term * wins // (n - wins + 1)
    return None if found is None else 2 * found - n


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down rejections at family-wise level ``alpha``: the j-th smallest p-value
    (from 0) is compared with alpha / (m - j), stopping at the first that fails. Controls the
    chance of any false claim at ``alpha``, whatever the dependence between the tests, and
    rejects at least what Bonferroni does."""
    m = len(p_values)
    rejected = [False] * m
    for j, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        if p_values[i] > alpha / (m - j):
            break
        rejected[i] = True
    return rejected


# --------------------------------------------------------------------------- flags


def pack_flags(flags: Sequence[bool]) -> str:
    """Per-sample flags as text: bits packed 8 to a byte (first sample in the top bit), base64.
    2,000 samples take 336 characters."""
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i >> 3] |= 0x80 >> (i & 7)
    return base64.b64encode(bytes(out)).decode("ascii")


def unpack_flags(text: str, n: int) -> list[bool]:
    """The inverse of :func:`pack_flags` for ``n`` samples."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"packed flags hold {len(raw) * 8} bits, not the {n} samples asked for")
    return [bool(raw[i >> 3] & (0x80 >> (i & 7))) for i in range(n)]
