"""A helper rank of a data-parallel run, started by :func:`cartl_core.parallel.run_parallel` as
``python -m cartl_core._rank PAYLOAD RANK WORLD PORT THREADS``.

Its own module, so that the run's state lives in the one ``cartl_core.parallel`` every import
sees (run as ``__main__``, that module would be a second copy).
"""

from __future__ import annotations

import sys

from cartl_core.parallel import _helper

if __name__ == "__main__":
    sys.exit(_helper(sys.argv[1:]))
