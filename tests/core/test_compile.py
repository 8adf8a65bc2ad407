"""The compiled path (``CARTL_COMPILE``, :func:`cartl_core._runtime.compile_blocks`) gives the
eager path's numbers: the same PGD examples and predictions, the same adversarial-training step.
Compiled on the CPU here (inductor's C++ backend); on a GPU ``bench/gpu_arithmetic.py`` measures
what it gains."""

from __future__ import annotations

import copy

import pytest
import torch

from cartl_core import AttackConfig, ConfigError, FDMConfig
from cartl_core._runtime import COMPILE_ENV, compile_blocks, prepare_model
from cartl_core.attacks import pgd
from cartl_core.models import ModelSpec, build_model
from cartl_core.training import fdm_step

from .conftest import make_dataset

pytestmark = pytest.mark.timeout(600)


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_the_blocks_are_compiled_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(ModelSpec("small-cnn", 4, 1, 8))
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    prepare_model(model, torch.device("cpu"))
    assert not any(_compiled(b) for b in model.blocks)
    monkeypatch.setenv(COMPILE_ENV, "fastest")
    with pytest.raises(ConfigError, match="CARTL_COMPILE='fastest': use one of off, default"):
        prepare_model(model, torch.device("cpu"))
    monkeypatch.setenv(COMPILE_ENV, "default")
    prepare_model(model, torch.device("cpu"))
    assert all(_compiled(b) for b in (model.stem, *model.blocks))
    # Compiled in place: the parameter names a checkpoint holds do not change.
    assert list(model.state_dict()) == list(build_model(model.spec).state_dict())


# Dynamo looks at .grad of the non-leaf tensors it traces; nothing here reads them.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_the_compiled_path_gives_the_same_numbers() -> None:
    torch.manual_seed(0)
    data = make_dataset(num_classes=4, n_train=64)
    eager = build_model(ModelSpec("small-cnn", 4, 1, 8))
    prepare_model(eager, torch.device("cpu"))
    compiled = compile_blocks(copy.deepcopy(eager), "default")
    x = data.train.images.contiguous(memory_format=torch.channels_last)
    y = data.train.labels

    # PGD-10: the examples and what the model says of them.
    torch.manual_seed(1)
    a = pgd(eager, x, y, 0.1, 0.025, 10)
    torch.manual_seed(1)
    b = pgd(compiled, x, y, 0.1, 0.025, 10)
    # Sign steps: a gradient component within float noise of zero may flip one pixel's step.
    assert (a != b).float().mean() < 0.01
    with torch.no_grad():
        assert torch.equal(eager(a).argmax(1), compiled(a).argmax(1))
        torch.testing.assert_close(eager(a), compiled(a), atol=1e-5, rtol=1e-5)

    # One PGD-7 adversarial-training step (FDM with lambda 0, the pre-training's own step).
    config = FDMConfig(k=1, fdm_lambda=0.0, attack=AttackConfig(eps=0.1, steps=7))
    outs = []
    for model in (eager, compiled):
        model.train()
        step = fdm_step(model, torch.optim.SGD(model.parameters(), lr=0.1), config)
        torch.manual_seed(2)
        outs.append(step(x, y))
    torch.testing.assert_close(outs[0]["loss"], outs[1]["loss"], atol=1e-4, rtol=1e-5)
    assert outs[0]["adv_accuracy"] == outs[1]["adv_accuracy"]
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)
