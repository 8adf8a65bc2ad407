"""Run the Alembic migrations programmatically (``cartl db upgrade``, ``cartl serve``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config

__all__ = ["alembic_config", "migrations_dir", "upgrade"]


def migrations_dir() -> Path:
    """The Alembic script folder: the top-level ``migrations`` package the wheel installs.

    An editable install made before ``migrations`` was a package does not map it; there, the
    folder beside the ``app`` package (the source checkout) is used. A ``migrations`` package
    that is not ours (no ``env.py`` and ``versions/``) is passed over.
    """
    candidates: list[Path] = []
    try:
        found = resources.files("migrations")
    except ModuleNotFoundError:
        pass
    else:
        # A plain folder on disk (a wheel installs unzipped); Alembic needs a real path.
        if isinstance(found, Path):
            candidates.append(found)
    candidates.append(Path(__file__).resolve().parents[2] / "migrations")
    for folder in candidates:
        if (folder / "env.py").is_file() and (folder / "versions").is_dir():
            return folder
    raise RuntimeError(
        "the Alembic migrations were not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); reinstall cartl"
    )


def alembic_config(url: str) -> Config:
    cfg = Config()
    # configparser interpolation would read a % in the path or a password as a reference.
    cfg.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)
