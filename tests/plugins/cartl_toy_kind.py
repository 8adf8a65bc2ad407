"""A toy job kind, as a user would add one: clean accuracy of a model on its test split.

All it takes is this module: its parameters (one dataclass, the one schema), the inputs it needs
(a checkpoint it examines), its run function, and one :func:`register` call. The tests register
it in-process (``tests/core/test_kind_registry.py``, ``tests/api/test_kind_registry.py``) and,
through the entry point in ``cartl_toy_kind-0.1.dist-info`` beside it, in a real worker process
(``tests/worker/test_kind_plugin.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cartl_core.kinds import JobKind, JobOutcome, RunContext, register
from cartl_core.options import option


@dataclass(frozen=True)
class CleanAccuracyParams:
    limit: int | None = option(
        None, "evaluate only the first N test samples", metavar="N", ge=1, le=1_000_000
    )
    batch_size: int = option(256, "evaluation batch size", ge=1, le=65_536)

    def check(self) -> None:
        """Nothing relates these two to each other."""


def _run(params: CleanAccuracyParams, ctx: RunContext) -> JobOutcome:
    from cartl_core import load_dataset, load_model
    from cartl_core._runtime import prepare_model, resolve_device
    from cartl_core.training.loop import evaluate_accuracy

    checkpoint = ctx.needs_checkpoint("clean-accuracy")
    data = load_dataset(ctx.dataset_path)
    c, h, _ = data.input_shape
    model = load_model(checkpoint, in_channels=c, input_size=h)
    prepare_model(model, resolve_device(ctx.device))
    split = data.test
    if params.limit is not None:
        split = split.subset(torch.arange(min(params.limit, len(split))))
    accuracy = evaluate_accuracy(model, split, batch_size=params.batch_size)
    return JobOutcome(metrics={"clean_accuracy": accuracy, "samples": len(split)})


TOY = register(
    JobKind(
        name="clean-accuracy",
        summary="clean accuracy of a model on its test split (a toy kind)",
        params=CleanAccuracyParams,
        run=_run,
        checkpoint="model",
        progress="none",
        makes_weights=False,
        example={"summary": "Clean accuracy on 100 test images", "params": {"limit": 100}},
    )
)
