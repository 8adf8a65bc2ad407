"""Numbers and settings as short text, read tolerantly from the plain data a job stores.

Every input may be missing, of an older shape or odd (text where a number was, NaN): readers
return None or an empty list and formatters say ``n/a``, so nothing here raises. No HTML: the SVG
and PNG charts use the same text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cartl_core.stats import accuracy_interval

Record = Mapping[str, Any]


def num(value: Any) -> float | None:
    """A finite number, or None for anything else (missing, text, NaN, bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def records(value: Any) -> list[Record]:
    """The mappings of a list (an older or damaged result may hold anything there)."""
    if not isinstance(value, list | tuple):
        return []
    return [v for v in value if isinstance(v, Mapping)]


def mapping(value: Any) -> Record:
    return value if isinstance(value, Mapping) else {}


def pct(value: Any) -> str:
    v = num(value)
    return "n/a" if v is None else f"{100 * v:.1f}%"


def interval_of(row: Record, key: str, samples: Any = None) -> list[float] | None:
    """The 95% Wilson interval of ``row[key]``: stored beside it (``KEY_interval``, or
    ``clean_interval`` for ``clean_accuracy``), else computed from ``samples`` (results from
    before intervals), else None."""
    stored = row.get(f"{key}_interval", row.get(f"{key.removesuffix('_accuracy')}_interval"))
    if isinstance(stored, list | tuple) and len(stored) == 2:
        low, high = num(stored[0]), num(stored[1])
        if low is not None and high is not None:
            return [low, high]
    value, n = num(row.get(key)), num(samples)
    if value is None or n is None or n < 1 or not 0 <= value <= 1:
        return None
    return accuracy_interval(value, int(n))


def pct_ci(value: Any, interval: list[float] | None) -> str:
    """``81.0% (77.2-84.4)``: a percentage and its interval in percent, or the percentage."""
    if interval is None or num(value) is None:
        return pct(value)
    return f"{pct(value)} ({100 * interval[0]:.1f}\u2013{100 * interval[1]:.1f})"


def eps_text(value: Any) -> str:
    """An eps as a decimal, with its k/255 form when it is one (8/255 reads better)."""
    v = num(value)
    if v is None:
        return "n/a"
    k = round(v * 255)
    if 0 < v < 1 and abs(k / 255 - v) < 1e-9:
        return f"{v:.4g} ({k}/255)"
    return f"{v:.4g}"


def plain(value: Any) -> str:
    """Any value as short text: numbers to 4 significant digits, lists joined, maps as JSON."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(plain(v) for v in value) or "none"
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def seconds(value: Any) -> str:
    v = num(value)
    if v is None:
        return "n/a"
    if v < 120:
        return f"{v:.1f} s"
    return f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.1f} h"


def short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True)
class Threat:
    """A threat model as the report names it: ``L∞, eps 0.03137 (8/255)``."""

    norm: str | None
    eps: float | None

    def text(self) -> str:
        norm = {"linf": "L\u221e", "l2": "L2"}.get(str(self.norm), str(self.norm or "?"))
        return f"{norm}, eps {eps_text(self.eps)}"


def threat_of(audit: Record) -> Threat:
    """The main threat model: the new audit names it; an older one's is its first attack's."""
    config = mapping(audit.get("config"))
    attacks = records(audit.get("attacks"))
    first = attacks[0] if attacks else {}
    eps = audit.get("eps")
    if eps is None:
        conf_eps = config.get("eps")
        eps = conf_eps[0] if isinstance(conf_eps, list | tuple) and conf_eps else conf_eps
    if eps is None:
        eps = first.get("eps")
    norm = audit.get("norm") or config.get("norm") or first.get("norm")
    return Threat(norm, num(eps))
