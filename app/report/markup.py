"""The HTML pieces of the report: escaping, tables with captions and row headers, figures.

Every value may come from a user (class names, file names), so all text goes through
:func:`esc`; the functions taking cells take them already escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from app.report.format import plain


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(caption: str, head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Rows of already-escaped cells; the first cell of each row is its header."""
    body = []
    for row in rows:
        first, *rest = row
        cells = "".join(f"<td>{c}</td>" for c in rest)
        body.append(f'<tr><th scope="row">{first}</th>{cells}</tr>')
    heads = "".join(f'<th scope="col">{esc(h)}</th>' for h in head)
    attr = f' class="{cls}"' if cls else ""
    return (
        f"<table{attr}><caption>{esc(caption)}</caption><thead><tr>{heads}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def kv_table(caption: str, items: Iterable[tuple[str, Any]]) -> str:
    # In settings, None means "the default" (alpha None: eps/4; arch None: the checkpoint's).
    rows = [(esc(k), f"<code>{esc('default' if v is None else plain(v))}</code>") for k, v in items]
    return table(caption, ("setting", "value"), rows, cls="kv")


def figure(svg: str, caption: str) -> str:
    """A chart with its caption (already escaped)."""
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"
