"""The README documents every setting and the commands CI and newcomers rely on."""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_settings_table() -> None:
    missing = [
        f"CARTL_{n.upper()}" for n in Settings.model_fields if f"`CARTL_{n.upper()}`" not in README
    ]
    assert not missing, f"README's settings table lacks {missing}"


def test_the_two_setup_commands_and_the_ci_test_command_agree() -> None:
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "cartl serve" in README
    assert "python -m pytest" in README
    assert ci.rstrip().endswith("python -m pytest")
