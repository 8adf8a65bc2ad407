"""Job kinds from outside the product, as users add them (see ``cartl_toy_kind``)."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator

from cartl_core.kinds import JobKind, unregister

TOY_MODULE = "tests.plugins.cartl_toy_kind"


@contextlib.contextmanager
def toy_kind() -> Iterator[JobKind]:
    """The toy kind, registered (by importing its module, as the entry point does) and
    unregistered afterwards, so other tests see only the built-in kinds."""
    module = importlib.import_module(TOY_MODULE)
    try:
        yield module.TOY
    finally:
        unregister(module.TOY.name)
        sys.modules.pop(TOY_MODULE, None)
