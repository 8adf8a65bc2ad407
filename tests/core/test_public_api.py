"""The public surface is what we meant, and cartl_core imports nothing from the service."""

from __future__ import annotations

import subprocess
import sys

import cartl_core

EXPECTED = {
    "BN_PRESETS",
    "ArchitectureError",
    "AttackConfig",
    "AuditConfig",
    "AuditReport",
    "BNPolicy",
    "BlockModel",
    "CancelledError",
    "CartlError",
    "CheckpointError",
    "CompareConfig",
    "CompareResult",
    "ConfigError",
    "DataError",
    "Dataset",
    "FDMConfig",
    "LwFConfig",
    "ModelSpec",
    "ProgressEvent",
    "Resize",
    "ScheduleConfig",
    "Split",
    "TraceConfig",
    "TrainResult",
    "TransferConfig",
    "UnsafeArchiveError",
    "UnsafeCheckpointError",
    "__version__",
    "audit",
    "compare",
    "create_model",
    "fgsm",
    "list_models",
    "load_dataset",
    "load_model",
    "pgd",
    "pretrain",
    "read_description",
    "robust_mask",
    "save_checkpoint",
    "transfer",
}


def test_exported_members() -> None:
    assert set(cartl_core.__all__) == EXPECTED
    for name in cartl_core.__all__:
        assert hasattr(cartl_core, name), name


def test_no_web_or_database_imports() -> None:
    code = (
        "import sys, cartl_core; "
        "bad = {'fastapi', 'sqlalchemy', 'celery', 'pydantic', 'redis'} & set(sys.modules); "
        "print(sorted(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_errors_form_one_tree() -> None:
    for name in (
        "ArchitectureError",
        "CheckpointError",
        "ConfigError",
        "DataError",
        "UnsafeArchiveError",
        "UnsafeCheckpointError",
        "CancelledError",
    ):
        assert issubclass(getattr(cartl_core, name), cartl_core.CartlError)
