"""The package's version, in a module of its own so that any module may import it (the package's
``__init__`` imports nearly everything, so importing ``cartl_core.__version__`` from inside would
be a cycle)."""

__version__ = "0.1.0"
