"""Every architecture builds, splits into the paper's blocks, and keeps normalisation inside."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from cartl_core import ArchitectureError, ConfigError, create_model
from cartl_core.models import (
    BlockModel,
    ModelSpec,
    build_model,
    list_models,
    model_families,
    register_model,
    unregister_model,
)
from cartl_core.models.small_cnn import small_cnn
from cartl_core.models.tv import SUPPORTED_FAMILIES

PAPER_BLOCKS = [
    ("resnet18-cifar", 9),
    ("resnet50-cifar", 17),
    ("wrn-34-10", 17),
    ("wrn-28-4", 14),
    ("wrn-16-4", 8),
    ("small-cnn", 5),
    ("torchvision:resnet18", 9),
    ("torchvision:resnet50", 17),
    # Published layouts: every residual block, the final BN (where there is one), the head.
    ("robustbench:wrn-28-10", 14),
    ("robustbench:dm-wrn-70-16", 35),
    ("robustbench:dm-preact-resnet-18", 10),
    ("robustbench:preact-resnet-18", 9),
    ("robustbench:preact-resnet-18-bn", 10),
    ("timm:resnet18", 9),
    ("timm:convnext_atto", 13),
    ("timm:vit_tiny_patch16_224", 13),
    ("timm:swin_tiny_patch4_window7_224", 13),
    ("timm:xcit_nano_12_p16_224", 15),
]


@pytest.mark.parametrize(("arch", "blocks"), PAPER_BLOCKS)
def test_block_count(arch: str, blocks: int) -> None:
    # On the meta device: counting needs the modules, not their weights (WRN-70-16 has 267M).
    with torch.device("meta"):
        assert create_model(arch, 10).num_blocks == blocks


@pytest.mark.parametrize(
    "arch",
    [
        "small-cnn",
        "resnet18-cifar",
        "wrn-16-4",
        "torchvision:resnet18",
        "torchvision:vgg11",
        "torchvision:mobilenet_v2",
        "torchvision:mobilenet_v3_small",
    ],
)
def test_forward_matches_split(arch: str) -> None:
    model = create_model(arch, 7).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        for k in (1, 2, model.num_blocks):
            assert torch.allclose(model.tuned_part(model.frozen_part(x, k), k), logits, atol=1e-5)
    assert logits.shape == (2, 7)


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 8), (4, 13), (3, 64)])
def test_small_cnn_any_channels_and_size(channels: int, size: int) -> None:
    model = create_model("small-cnn", 3, in_channels=channels, input_size=size).eval()
    assert model(torch.rand(2, channels, size, size)).shape == (2, 3)


def test_wrn_k4_tunes_last_two_residual_blocks_final_bn_and_head() -> None:
    model = create_model("wrn-34-10", 10)
    tuned = [type(m).__name__ for m in model.tuned_modules(4)]
    assert tuned == ["PreActBlock", "PreActBlock", "FinalBNBlock", "Head"]


def test_normalisation_is_inside_the_model() -> None:
    model = create_model("small-cnn", 3, in_channels=1, mean=(0.5,), std=(0.25,)).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        direct = model.tuned_part(model.stem((x - 0.5) / 0.25), model.num_blocks)
        assert torch.allclose(model(x), direct)


def test_reset_classifier_and_residual_scale_round_trip_through_spec() -> None:
    model = create_model("resnet18-cifar", 100)
    model.reset_classifier(10)
    model.set_residual_scale(0.5, [6, 7, 8])
    rebuilt = build_model(model.spec)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    assert rebuilt.blocks[7].residual_scale == 0.5
    assert rebuilt.blocks[0].residual_scale == 1.0


def test_torchvision_residual_scale_changes_output() -> None:
    model = create_model("torchvision:resnet18", 5).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.set_residual_scale(0.5, [7])
        assert not torch.allclose(before, model(x))


@pytest.mark.parametrize("bad", ["resnet999", "wrn-33-10", "wrn-34-0", "torchvision:nope"])
def test_unknown_architecture(bad: str) -> None:
    with pytest.raises(ArchitectureError):
        create_model(bad, 10)


def test_k_out_of_range_names_the_limit() -> None:
    model = create_model("small-cnn", 3)
    with pytest.raises(ConfigError, match="between 1 and 5"):
        model.frozen_part(torch.rand(1, 3, 8, 8), 6)


def test_wrn_initialisation_matches_the_release() -> None:
    # Kaiming-normal with fan_out for the LeakyReLU(0.1) that follows, BN 1/0, classifier bias 0.
    model = create_model("wrn-16-4", 10)
    gain = math.sqrt(2 / (1 + 0.1**2))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        expected = gain / math.sqrt(fan_out)
        # The estimate's relative error is about 1/sqrt(2n): 3.4% for the stem's 432 weights.
        w = conv.weight.detach()
        tolerance = 5 / math.sqrt(2 * w.numel())
        assert float(w.std()) == pytest.approx(expected, rel=tolerance)
        assert abs(float(w.mean())) < expected * tolerance
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in bns)
    assert torch.all(model.head.fc.bias == 0)


# The registry: one table of architecture families that build_model, list_models and
# `cartl models` all read.

FAMILIES = [
    "small-cnn",
    "resnetD-cifar",
    "wrn-D-W",
    "torchvision:NAME",
    "robustbench:wrn-D-W",
    "robustbench:dm-wrn-D-W[-relu]",
    "robustbench:dm-preact-resnet-D[-relu]",
    "robustbench:preact-resnet-D[-bn]",
    "timm:NAME",
]


def _cartl_models(capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, int], dict[str, str]]:
    """`cartl models`: block counts of the examples, and each family's line."""
    from app.cli.library import main

    assert main(["models"]) == 0
    counts: dict[str, int] = {}
    lines: dict[str, str] = {}
    for line in capsys.readouterr().out.splitlines():
        if m := re.fullmatch(r"(\S+) +T = (\d+)", line):
            counts[m.group(1)] = int(m.group(2))
        elif line:
            name, _, text = line.partition(" ")
            lines[name] = text.strip()
    return counts, lines


def test_table_lists_every_family(capsys: pytest.CaptureFixture[str]) -> None:
    families = model_families()
    assert [f.name for f in families] == FAMILIES
    assert list_models() == FAMILIES
    assert all(f.description and f.examples for f in families)
    _, lines = _cartl_models(capsys)
    assert lines == {f.name: f.summary for f in families}
    # torchvision's supported families come from the code that decides support.
    torchvision = next(f for f in families if f.name == "torchvision:NAME")
    assert torchvision.supported == SUPPORTED_FAMILIES
    assert all(s in lines["torchvision:NAME"] for s in SUPPORTED_FAMILIES)


def test_every_example_builds_with_the_block_count_cartl_models_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    examples = [arch for f in model_families() for arch in f.examples]
    counts, _ = _cartl_models(capsys)
    assert list(counts) == examples
    with torch.device("meta"):
        assert counts == {arch: create_model(arch, 10).num_blocks for arch in examples}
    assert dict(PAPER_BLOCKS).items() >= counts.items()


def test_each_example_matches_only_its_family() -> None:
    for family in model_families():
        for arch in family.examples:
            assert [f.name for f in model_families() if f.match(arch) is not None] == [family.name]


def test_unknown_architecture_lists_the_families() -> None:
    with pytest.raises(ArchitectureError, match="unknown architecture 'resnet999'") as err:
        create_model("resnet999", 10)
    assert str(err.value).endswith("use one of: " + ", ".join(FAMILIES))


def test_unsupported_torchvision_model_lists_the_supported_families() -> None:
    with pytest.raises(ArchitectureError, match="cannot be split") as err:
        create_model("torchvision:alexnet", 10)
    assert str(err.value).endswith(", ".join(SUPPORTED_FAMILIES))


def test_a_registered_family_is_built_and_listed() -> None:
    seen: list[str] = []

    @register_model(
        "tiny-cnn-W",
        description="a test family",
        examples=["tiny-cnn-8"],
        pattern=r"tiny-cnn-(?P<width>\d+)",
    )
    def tiny(spec: ModelSpec, width: str) -> BlockModel:
        seen.append(width)
        return small_cnn(spec)

    try:
        assert list_models() == [*FAMILIES, "tiny-cnn-W"]
        model = create_model("tiny-cnn-8", 3, in_channels=1, input_size=8)
        assert seen == ["8"]
        assert model.num_blocks == 5
        assert model.spec.arch == "tiny-cnn-8"
        assert build_model(model.spec).spec == model.spec
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny-cnn-W", description="again")(tiny)
    finally:
        family = unregister_model("tiny-cnn-W")
    assert family.build is tiny
    assert list_models() == FAMILIES
    with pytest.raises(ArchitectureError, match="unknown architecture 'tiny-cnn-8'"):
        create_model("tiny-cnn-8", 3)
    with pytest.raises(ValueError, match="no architecture family"):
        unregister_model("tiny-cnn-W")
