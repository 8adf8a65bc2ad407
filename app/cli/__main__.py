"""``python -m app.cli``: the ``cartl`` command, as the console script runs it."""

from __future__ import annotations

from app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
