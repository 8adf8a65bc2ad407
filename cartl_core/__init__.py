"""CARTL: Cooperative Adversarially-Robust Transfer Learning (Chen et al., ICML 2021).

Fine-tune a pre-trained model on a small target dataset without throwing away its adversarial
robustness: FDM pre-training on the source, non-expansive fine-tuning (NEFT) on the target, and a
PGD audit of the result. Pure PyTorch; the CLI is ``cartl``.
"""

from cartl_core._version import __version__
from cartl_core.attacks import fgsm, pgd, robust_mask
from cartl_core.audit import AuditReport, audit
from cartl_core.checkpoints import load_model, read_description, save_checkpoint
from cartl_core.compare import CompareResult, compare
from cartl_core.config import (
    BN_PRESETS,
    AttackConfig,
    AuditConfig,
    BNPolicy,
    CompareConfig,
    FDMConfig,
    LwFConfig,
    ScheduleConfig,
    TraceConfig,
    TransferConfig,
)
from cartl_core.data import Dataset, Resize, Split, load_dataset
from cartl_core.errors import (
    ArchitectureError,
    CancelledError,
    CartlError,
    CheckpointError,
    ConfigError,
    DataError,
    UnsafeArchiveError,
    UnsafeCheckpointError,
)
from cartl_core.models import BlockModel, ModelSpec, create_model, list_models
from cartl_core.training import ProgressEvent, TrainResult, pretrain, transfer

__all__ = [
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
]
