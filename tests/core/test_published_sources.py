"""Published robust sources load as they are published: RobustBench's zoo, MadryLab's
robustness and timm.

Each architecture is built from the maintained package that defines it (robustbench 1.1.1,
robustness 1.2.1.post2, timm), with random weights and random BatchNorm statistics, and saved in
the layout the zoo's files have. The product then loads the file without being told the
architecture (timm: by name), and its forward pass on [0, 1] images must equal the package's
model wrapped in the normalisation the zoo applies. Small variants (WRN-16-2 in the same layouts)
keep the forwards fast; the big ones (WRN-28-10, 34-10, 70-16, ResNet-50) are checked on the meta
device: their keys and shapes, without weights. Nothing is downloaded.

robustbench and robustness install with ``pip install --no-deps`` (their own dependencies pull
in downloaders and a git-only AutoAttack) and their packages do not import without them; only the
architecture modules are loaded, by path, and the two wrappers whose modules import more
(robustness' AttackerModel, RobustBench's zoo subclasses) are reproduced below from their source.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cartl_core import CheckpointError, load_model
from cartl_core.checkpoints import PLAIN_FORMAT, describe_model, guess_in_channels
from cartl_core.errors import ArchitectureError, ConfigError, UnsafeCheckpointError
from cartl_core.models import create_model
from cartl_core.models.layouts import recognise, unwrap

CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# robustness.datasets.CIFAR's statistics (its InputNormalize buffers).
ROBUSTNESS_CIFAR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed (pip install --no-deps {package})")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def _load_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def robustbench(module: str) -> ModuleType:
    """``robustbench.model_zoo.architectures.MODULE``, loaded alone (these import only torch)."""
    path = _package_file("robustbench", f"model_zoo/architectures/{module}.py")
    return _load_file(f"_robustbench_{module}", path)


def robustness(module: str) -> ModuleType:
    """``robustness.MODULE``; its relative imports reach only ``robustness.tools``."""
    path = _package_file("robustness", f"{module.replace('.', '/')}.py")
    return _load_file(f"robustness.{module}", path)


def _randomised(net: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine weights, so the comparison exercises them."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None
            assert m.running_var is not None
            shape = m.running_mean.shape
            m.running_mean.copy_(torch.rand(shape, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(shape, generator=gen) * 0.4 - 0.2)
    return net.eval()


def _assert_same_outputs(
    ours: nn.Module, reference: Callable[[torch.Tensor], Any], size: int, batch: int = 3
) -> None:
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)
        if isinstance(expected, tuple):  # robustbench's dm_rn.WideResNet returns features too
            expected = expected[0]
        got = ours(x)
    assert got.shape == expected.shape
    scale = float(expected.abs().max())
    assert scale > 1e-3  # a network whose output is not all zeros
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale), float(
        (got - expected).abs().max()
    )


def _normalized(
    mean: tuple[float, ...], std: tuple[float, ...], net: nn.Module
) -> Callable[..., Any]:
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return lambda x: net((x - m) / s)


def _prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


# --- RobustBench -------------------------------------------------------------------------------


def _rb_normalised_subclass(base: type[nn.Module], mean: Any, std: Any) -> type[nn.Module]:
    """The zoo's per-entry subclasses (``Rice2020OverfittingNet(WideResNet)``,
    ``Wong2020FastNet(PreActResNet)``, ``Engstrom2019RobustnessNet(ResNet)``, ...): ``mu`` and
    ``sigma`` buffers, and a forward that normalises first (robustbench/model_zoo/cifar10.py)."""

    class Net(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.register_buffer("mu", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("sigma", torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> Any:
            return super().forward((x - self.mu) / self.sigma)

    return Net


def test_trades_wide_resnet_with_an_unused_sub_block(tmp_path: Path) -> None:
    # Carmon2019Unlabeled & co: WideResNet(sub_block1=True), saved under "state_dict" with
    # DataParallel's "module."; no normalisation anywhere (the zoo feeds [0, 1] images).
    wrn = robustbench("wide_resnet")
    net = _randomised(wrn.WideResNet(depth=16, widen_factor=2, sub_block1=True))
    path = tmp_path / "Carmon2019Unlabeled.pt"
    torch.save({"state_dict": _prefixed(net.state_dict(), "module."), "epoch": 3}, path)
    model = load_model(path)
    assert model.spec.arch == "robustbench:wrn-16-2"
    assert model.num_blocks == 8
    origin = model.origin
    assert origin is not None
    assert origin["layout"] == "robustbench:wrn-16-2"
    assert origin["arch_source"] == "recognised"
    assert origin["normalization"]["source"].startswith("none")
    assert [line.split(" ")[0] for line in origin["ignored"]] == ["sub_block1.*"]
    _assert_same_outputs(model, net, 32)


def test_trades_wide_resnet_with_the_entrys_mu_and_sigma(tmp_path: Path) -> None:
    # Rice2020Overfitting-style: the entry's subclass keeps its normalisation in mu/sigma.
    wrn = robustbench("wide_resnet")
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    net = _randomised(_rb_normalised_subclass(wrn.WideResNet, mean, std)(16, 10, 2))
    path = tmp_path / "Rice2020Overfitting.pt"
    torch.save(net.state_dict(), path)
    model = load_model(path)
    assert model.spec.arch == "robustbench:wrn-16-2"
    assert model.spec.mean == pytest.approx(mean)
    assert model.spec.std == pytest.approx(std)
    assert model.origin is not None
    assert model.origin["normalization"]["source"].startswith("the file: mu, sigma")
    _assert_same_outputs(model, net, 32)


@pytest.mark.parametrize(
    ("classes", "stats"), [(10, CIFAR10), (100, CIFAR100)], ids=["cifar10", "cifar100"]
)
def test_deepmind_wide_resnet_swish(tmp_path: Path, classes: int, stats: Any) -> None:
    # Gowal2020Uncovering, Rebuffi2021Fixing, Wang2023Better: DMWideResNet with Swish; the
    # normalisation is the entry's (non-persistent buffers), by dataset.
    dm = robustbench("dm_wide_resnet")
    net = dm.DMWideResNet(
        num_classes=classes, depth=16, width=2, activation_fn=dm.Swish, mean=stats[0], std=stats[1]
    )
    path = tmp_path / "Gowal2020Uncovering.pt"
    torch.save(_randomised(net).state_dict(), path)
    model = load_model(path)
    assert model.spec.arch == "robustbench:dm-wrn-16-2"
    assert model.spec.num_classes == classes
    assert model.spec.mean == pytest.approx(stats[0])
    assert model.origin is not None
    assert f"CIFAR-{classes}" in model.origin["normalization"]["source"]
    _assert_same_outputs(model, net, 32)


def test_deepmind_layout_with_relu_is_named_by_arch(tmp_path: Path) -> None:
    # Two architectures share a layout: the keys say Swish (every zoo entry); arch says ReLU.
    dm = robustbench("dm_wide_resnet")
    net = _randomised(dm.DMWideResNet(num_classes=10, depth=10, width=1, activation_fn=nn.ReLU))
    path = tmp_path / "dm-relu.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    model = load_model(path, arch="robustbench:dm-wrn-10-1-relu")
    assert model.origin is not None
    assert model.origin["layout"] == "robustbench:dm-wrn-10-1"
    assert model.origin["arch_source"] == "given"
    _assert_same_outputs(model, net, 32)


def test_deepmind_preact_resnet_18(tmp_path: Path) -> None:
    # Rebuffi2021Fixing_R18, Gowal2021Improving_R18: a 3x3 projecting shortcut, "SAME" padding.
    dm = robustbench("dm_wide_resnet")
    net = _randomised(dm.DMPreActResNet(num_classes=10, depth=18, activation_fn=dm.Swish))
    path = tmp_path / "Rebuffi2021Fixing_R18.pt"
    torch.save(net.state_dict(), path)
    model = load_model(path)
    assert model.spec.arch == "robustbench:dm-preact-resnet-18"
    assert model.num_blocks == 10
    _assert_same_outputs(model, net, 32)


def test_preact_resnet_18_wong2020fast(tmp_path: Path) -> None:
    # Wong2020FastNet: PreActBlock (the shortcut sees the raw input), no final BatchNorm.
    rn = robustbench("resnet")
    net = _rb_normalised_subclass(rn.PreActResNet, *CIFAR10)(rn.PreActBlock, [2, 2, 2, 2])
    path = tmp_path / "Wong2020Fast.pt"
    torch.save(_randomised(net).state_dict(), path)
    model = load_model(path)
    assert model.spec.arch == "robustbench:preact-resnet-18"
    assert model.num_blocks == 9
    assert model.spec.mean == pytest.approx(CIFAR10[0])
    _assert_same_outputs(model, net, 32)


def test_an_entry_whose_file_lacks_its_normalisation_is_named(tmp_path: Path) -> None:
    # Wong2020Fast as published: the network's weights alone (robustbench's loader tolerates the
    # missing mu/sigma and its subclass normalises). Named as robustbench:ENTRY, it loads with
    # the entry's normalisation; unnamed, the description says none was found.
    rn = robustbench("resnet")
    net = _rb_normalised_subclass(rn.PreActResNet, *CIFAR10)(rn.PreActBlock, [2, 2, 2, 2])
    sd = {k: v for k, v in _randomised(net).state_dict().items() if k not in ("mu", "sigma")}
    path = tmp_path / "Wong2020Fast.pt"
    torch.save(sd, path)
    model = load_model(path, arch="robustbench:Wong2020Fast")
    assert model.spec.arch == "robustbench:preact-resnet-18"
    assert model.origin is not None
    assert model.origin["zoo_entry"] == "Wong2020Fast"
    assert model.origin["normalization"]["source"].startswith("RobustBench's Wong2020Fast entry")
    _assert_same_outputs(model, net, 32)
    bare = load_model(path)
    assert bare.origin is not None
    assert bare.origin["normalization"]["source"].startswith("none")
    with pytest.raises(CheckpointError, match="each image by that image"):
        load_model(path, arch="robustbench:Ding2020MMA")


def test_preact_resnet_18_with_final_bn_under_last(tmp_path: Path) -> None:
    # Kireev2021Effectiveness: PreActBlockV2 + bn_before_fc, the file keeps "last" and "best".
    rn = robustbench("resnet")
    net = _rb_normalised_subclass(rn.PreActResNet, *CIFAR10)(
        rn.PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True
    )
    sd = _randomised(net).state_dict()
    path = tmp_path / "Kireev2021Effectiveness.pt"
    torch.save({"last": sd, "best": {k: torch.zeros_like(v) for k, v in sd.items()}}, path)
    model = load_model(path)
    assert model.spec.arch == "robustbench:preact-resnet-18-bn"
    _assert_same_outputs(model, net, 32)


def test_cifar_resnet_50_engstrom2019(tmp_path: Path) -> None:
    # Engstrom2019RobustnessNet(ResNet): pytorch-cifar's Bottleneck ResNet-50 with mu/sigma.
    rn = robustbench("resnet")
    net = _rb_normalised_subclass(rn.ResNet, *ROBUSTNESS_CIFAR)(rn.Bottleneck, [3, 4, 6, 3])
    path = tmp_path / "Engstrom2019Robustness.pt"
    torch.save(_randomised(net).state_dict(), path)
    model = load_model(path)
    assert model.spec.arch == "resnet50-cifar"
    assert model.num_blocks == 17
    assert model.origin is not None
    assert model.origin["layout"] == "robustbench:resnet50-cifar"
    _assert_same_outputs(model, net, 32)


def test_imagenet_resnet_in_robustbench_normalize_model(tmp_path: Path) -> None:
    # Salman2020Do_R18 & co: normalize_model(torchvision resnet18, mu, sigma), whose state dict
    # has normalize.mean/std beside model.*.
    import torchvision

    utils = robustbench("utils_architectures")
    net = utils.normalize_model(torchvision.models.resnet18(), *IMAGENET)
    path = tmp_path / "Salman2020Do_R18.pt"
    torch.save(_randomised(net).state_dict(), path)
    model = load_model(path, input_size=64)
    assert model.spec.arch == "torchvision:resnet18"
    assert model.spec.num_classes == 1000
    assert model.origin is not None
    assert model.origin["layout"] == "robustbench:resnet18"
    assert model.origin["trained_input_size"] == 224
    assert model.origin["normalization"]["source"].startswith("the file: normalize.mean")
    _assert_same_outputs(model, net, 64)


# --- MadryLab robustness -----------------------------------------------------------------------


class _InputNormalize(nn.Module):
    """``robustness.tools.helpers.InputNormalize`` (helpers.py imports dill, pandas and cox)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("new_mean", mean[..., None, None])
        self.register_buffer("new_std", std[..., None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.clamp(x, 0, 1) - self.new_mean) / self.new_std  # type: ignore[operator]


class _AttackerModel(nn.Module):
    """``robustness.attacker.AttackerModel``: its normalizer, the model, and the attacker, which
    holds its own normalizer and the same model (attacker.py, ``Attacker.__init__`` and
    ``AttackerModel.__init__``); inference runs ``model(normalizer(x))``."""

    def __init__(self, model: nn.Module, mean: Any, std: Any) -> None:
        super().__init__()
        self.normalizer = _InputNormalize(torch.tensor(mean), torch.tensor(std))
        self.model = model
        self.attacker = nn.Module()
        self.attacker.add_module(
            "normalize", _InputNormalize(torch.tensor(mean), torch.tensor(std))
        )
        self.attacker.add_module("model", model)

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(self.normalizer(x))


def _madrylab_file(path: Path, net: nn.Module, mean: Any, std: Any) -> nn.Module:
    """Saved as robustness' train.py does: the DataParallel-wrapped AttackerModel's state dict
    under "model", beside the optimizer's and the epoch."""
    wrapped = _AttackerModel(_randomised(net), mean, std).eval()
    sd = nn.DataParallel(wrapped).state_dict()
    assert "module.attacker.model.conv1.weight" in sd
    assert "module.normalizer.new_mean" in sd
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    torch.save({"model": sd, "optimizer": opt.state_dict(), "schedule": None, "epoch": 90}, path)
    return wrapped


def test_madrylab_imagenet_resnet18(tmp_path: Path) -> None:
    resnet = robustness("imagenet_models.resnet")
    path = tmp_path / "imagenet_linf_4.pt"
    wrapped = _madrylab_file(path, resnet.resnet18(), *IMAGENET)
    model = load_model(path, input_size=64)
    assert model.spec.arch == "torchvision:resnet18"
    assert model.origin is not None
    assert model.origin["layout"] == "madrylab-robustness:resnet18"
    assert model.origin["wrapper"] == "madrylab-robustness"
    assert model.origin["normalization"]["source"].startswith("the file: normalizer.new_mean")
    assert model.origin["ignored"][0].startswith("attacker.* (")
    _assert_same_outputs(model, wrapped, 64)


def test_madrylab_cifar_resnet50(tmp_path: Path) -> None:
    resnet = robustness("cifar_models.resnet")
    path = tmp_path / "cifar_linf_8.pt"
    wrapped = _madrylab_file(path, resnet.ResNet50(), *ROBUSTNESS_CIFAR)
    model = load_model(path)
    assert model.spec.arch == "resnet50-cifar"
    assert model.spec.std == pytest.approx(ROBUSTNESS_CIFAR[1])
    assert model.origin is not None
    assert model.origin["layout"] == "madrylab-robustness:resnet50-cifar"
    _assert_same_outputs(model, wrapped, 32)


def test_madrylab_imagenet_wide_resnet50_3(tmp_path: Path) -> None:
    # robustness' imagenet_models widen ResNet-50 up to six times where torchvision stops at
    # twice: the width is read from the keys (135M weights: one 64-px image keeps it quick).
    resnet = robustness("imagenet_models.resnet")
    path = tmp_path / "imagenet_wrn50_3_linf.pt"
    wrapped = _madrylab_file(path, resnet.wide_resnet50_3(), *IMAGENET)
    model = load_model(path, input_size=64)
    assert model.spec.arch == "torchvision:wide_resnet50_3"
    assert model.num_blocks == 17
    assert model.origin is not None
    assert model.origin["layout"] == "madrylab-robustness:wide_resnet50_3"
    assert model.origin["normalization"]["source"].startswith("the file: normalizer.new_mean")
    _assert_same_outputs(model, wrapped, 64, batch=1)


@pytest.mark.parametrize("schedule", ["step", "lambda"])
def test_a_madrylab_file_pickled_with_dill_loads(tmp_path: Path, schedule: str) -> None:
    """robustness' train.py saves ``{"model", "optimizer", "schedule", "epoch", "amp"}`` with
    ``torch.save(..., pickle_module=dill)``, its scheduler's state included (StepLR, or LambdaLR
    for its custom schedules, whose lambdas the state leaves out)."""
    dill = pytest.importorskip("dill")
    from robustness.cifar_models import resnet  # type: ignore[import-untyped]

    net = _randomised(resnet.ResNet18())
    wrapped = _AttackerModel(net, *ROBUSTNESS_CIFAR).eval()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = (
        torch.optim.lr_scheduler.StepLR(opt, step_size=50)
        if schedule == "step"
        else torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.1**epoch)
    )
    opt.step()
    sched.step()
    info = {"model": nn.DataParallel(wrapped).state_dict(), "optimizer": opt.state_dict(),
            "schedule": sched.state_dict(), "epoch": 2, "amp": None}  # fmt: skip
    path = tmp_path / "checkpoint.pt.latest"
    torch.save(info, path, pickle_module=dill)
    model = load_model(path)
    assert model.origin is not None
    assert model.origin["layout"] == "madrylab-robustness:resnet18-cifar"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), wrapped(x), rtol=1e-4, atol=1e-4)


def test_a_madrylab_file_holding_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (Path.touch, (str(marker),))

    path = tmp_path / "evil.pt"
    sd = {"module.model.conv1.weight": torch.zeros(64, 3, 7, 7)}
    torch.save({"model": sd, "epoch": 1, "schedule": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="would run code"):
        load_model(path)
    assert not marker.exists()


# --- the big ones, by keys and shapes ---------------------------------------------------------


def _meta(build: Callable[[], nn.Module]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build().state_dict().items()}


def _fits(keys: dict[str, tuple[int, ...]], arch: str, classes: int, input_size: int = 32) -> None:
    """The layout ``keys`` is recognised as ``arch`` and maps one to one, shape for shape, onto
    that model's state (less the normalisation buffers, ours alone)."""
    # Small tensors (normalisation buffers) are read for their values: those get some.
    fake = {
        k: torch.ones(s) if torch.Size(s).numel() <= 3 else torch.empty(s, device="meta")
        for k, s in keys.items()
    }
    unwrapped = unwrap(fake)
    layout = recognise(unwrapped.state, unwrapped.wrapper)
    assert layout is not None
    assert (layout.arch, layout.num_classes) == (arch, classes)
    with torch.device("meta"):
        model = create_model(arch, classes, input_size=input_size)
    own = {
        k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("normalize.")
    }
    mapped = {model.foreign_keys.get(k, k): tuple(v.shape) for k, v in unwrapped.state.items()}
    assert mapped == own


@pytest.mark.parametrize(
    ("depth", "width", "sub_block"), [(28, 10, True), (34, 10, True), (34, 20, False)]
)
def test_trades_wide_resnets_of_the_zoo(depth: int, width: int, sub_block: bool) -> None:
    wrn = robustbench("wide_resnet")
    keys = _meta(lambda: wrn.WideResNet(depth=depth, widen_factor=width, sub_block1=sub_block))
    _fits(keys, f"robustbench:wrn-{depth}-{width}", 10)


@pytest.mark.parametrize(("depth", "width"), [(28, 10), (70, 16), (106, 16)])
def test_deepmind_wide_resnets_of_the_zoo(depth: int, width: int) -> None:
    dm = robustbench("dm_wide_resnet")
    keys = _meta(lambda: dm.DMWideResNet(num_classes=100, depth=depth, width=width,
                                         activation_fn=dm.Swish))  # fmt: skip
    _fits(keys, f"robustbench:dm-wrn-{depth}-{width}", 100)


def test_imagenet_resnet50s_of_the_zoo_and_of_robustness() -> None:
    import torchvision

    utils = robustbench("utils_architectures")
    keys = _meta(lambda: utils.normalize_model(torchvision.models.resnet50(), *IMAGENET))
    _fits(keys, "torchvision:resnet50", 1000)
    keys = _meta(lambda: utils.normalize_model(torchvision.models.wide_resnet50_2(), *IMAGENET))
    _fits(keys, "torchvision:wide_resnet50_2", 1000)
    resnet = robustness("imagenet_models.resnet")
    keys = _meta(lambda: nn.DataParallel(_AttackerModel(resnet.resnet50(), *IMAGENET)))
    # What load_model strips before it unwraps.
    _fits({k.removeprefix("module."): s for k, s in keys.items()}, "torchvision:resnet50", 1000)


@pytest.mark.parametrize(
    "name", ["wide_resnet50_4", "wide_resnet50_5", "wide_resnet50_6", "wide_resnet101_2"]
)
def test_madrylab_wider_imagenet_resnets(name: str) -> None:
    resnet = robustness("imagenet_models.resnet")
    build = getattr(resnet, name)
    keys = _meta(lambda: nn.DataParallel(_AttackerModel(build(), *IMAGENET)))
    _fits({k.removeprefix("module."): s for k, s in keys.items()}, f"torchvision:{name}", 1000)


@pytest.mark.parametrize("name", ["swin_base_patch4_window7_224", "swin_large_patch4_window7_224"])
def test_swins_of_the_zoo(name: str) -> None:
    # Liu2023Comprehensive_Swin-B/-L, Mo2022When_Swin-B, RodriguezMunoz2024Characterizing_Swin-B/-L:
    # normalize_model(timm.create_model(NAME), mu, sigma), recognised at the side their
    # windows were made for.
    timm = pytest.importorskip("timm")
    utils = robustbench("utils_architectures")
    keys = _meta(lambda: utils.normalize_model(timm.create_model(name), *IMAGENET))
    _fits(keys, f"timm:{name}", 1000, input_size=224)


@pytest.mark.parametrize(
    ("width", "heads", "name"),
    [
        (384, 8, "xcit_small_12_p16_224"),
        (512, 8, "debenedetti2022light_xcit_m12_imagenet_linf"),
        (768, 16, "debenedetti2022light_xcit_l12_imagenet_linf"),
    ],
    ids=["S12", "M12", "L12"],
)
def test_xcits_of_the_zoo(width: int, heads: int, name: str) -> None:
    # Debenedetti2022Light_XCiT-S12/M12/L12: timm's Xcit with the arguments RobustBench's
    # model_zoo/architectures/xcit.py registers them with (that module imports more of the zoo).
    timm = pytest.importorskip("timm")
    keys = _meta(
        lambda: timm.models.xcit.Xcit(
            patch_size=16, embed_dim=width, depth=12, num_heads=heads, eta=1.0, tokens_norm=True
        )
    )
    _fits(keys, f"timm:{name}", 1000)


# --- timm --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "vit_tiny_patch16_224"])
def test_timm_by_name_from_a_plain_state_dict(tmp_path: Path, name: str) -> None:
    timm = pytest.importorskip("timm")
    size = 32  # a ViT is built for its input size (its position embedding): 32 keeps it quick
    extra = {"img_size": size} if name.startswith("vit") else {}
    net = _randomised(timm.create_model(name, pretrained=False, num_classes=7, **extra))
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    model = load_model(path, arch=f"timm:{name}", input_size=size)
    assert model.spec.num_classes == 7
    # timm's pretrained configuration: what its published weights expect.
    cfg: Any = net.pretrained_cfg
    assert model.spec.mean == pytest.approx(cfg["mean"])
    assert model.num_blocks > 2
    _assert_same_outputs(model, _normalized(cfg["mean"], cfg["std"], net), size)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        for k in (1, 2, model.num_blocks):
            assert torch.allclose(model.tuned_part(model.frozen_part(x, k), k), model(x), atol=1e-5)


def test_timm_in_robustbench_normalize_model(tmp_path: Path) -> None:
    # Liu2023Comprehensive_ConvNeXt-B & co: normalize_model(timm.create_model(...), mu, sigma).
    timm = pytest.importorskip("timm")
    utils = robustbench("utils_architectures")
    net = utils.normalize_model(timm.create_model("convnext_atto", num_classes=5), *IMAGENET)
    path = tmp_path / "Liu2023Comprehensive.pt"
    torch.save(_randomised(net).state_dict(), path)
    with pytest.raises(CheckpointError, match="timm:NAME"):
        load_model(path)  # no layout for timm models: their names say too little
    model = load_model(path, arch="timm:convnext_atto", input_size=64)
    assert model.origin is not None
    assert model.origin["normalization"]["source"].startswith("the file: normalize.mean")
    _assert_same_outputs(model, net, 64)


def _assert_k_partitions(model: Any, size: int) -> None:
    """For a few k the frozen and the fine-tuned parts share the weights out, none left over and
    none in both, and running one after the other is the whole model; k outside 1..T is refused."""
    weights = {id(p) for p in model.parameters()}
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model(x)
        for k in (1, 2, 3, model.num_blocks):
            model.check_k(k)
            frozen = {id(p) for m in model.frozen_modules(k) for p in m.parameters()}
            tuned = {id(p) for m in model.tuned_modules(k) for p in m.parameters()}
            assert not frozen & tuned
            assert frozen | tuned == weights
            got = model.tuned_part(model.frozen_part(x, k), k)
            assert torch.allclose(got, whole, atol=1e-5)
    for k in (0, model.num_blocks + 1):
        with pytest.raises(ConfigError, match="out of range"):
            model.check_k(k)


@pytest.mark.parametrize(
    ("name", "blocks"), [("swin_tiny_patch4_window7_224", 13), ("xcit_nano_12_p16_224", 15)]
)
def test_timm_swin_and_xcit_by_name(tmp_path: Path, name: str, blocks: int) -> None:
    # The smallest of each that timm names (the names fix the sizes), at 32 px. Swin-T: 2+2+6+2
    # Swin blocks and the head; XCiT-nano: 12 XCA blocks, 2 class-attention blocks, the head.
    timm = pytest.importorskip("timm")
    size = 32
    extra = {"img_size": size} if name.startswith("swin") else {}
    net = _randomised(timm.create_model(name, pretrained=False, num_classes=7, **extra))
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    model = load_model(path, arch=f"timm:{name}", input_size=size)
    assert model.num_blocks == blocks
    assert model.spec.num_classes == 7
    cfg: Any = net.pretrained_cfg
    _assert_same_outputs(model, _normalized(cfg["mean"], cfg["std"], net), size)
    _assert_k_partitions(model, size)


def _swin_before_timm_0_9(net: nn.Module) -> dict[str, torch.Tensor]:
    """A timm Swin's weights in the names timm < 0.9 and Microsoft's release save them under: a
    stage's patch merging with the stage before it, the classifier as ``head``, and the buffers
    timm now recomputes (``relative_position_index``; ``attn_mask`` of the shifted blocks)."""
    old: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        if m := re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", key):
            key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        old[key.replace("head.fc.", "head.")] = value
    for key, buffer in net.named_buffers():
        if key.endswith(("relative_position_index", "attn_mask")):
            old[key] = buffer
    assert "layers.0.downsample.reduction.weight" in old
    return old


@pytest.mark.parametrize("names", ["timm", "timm<0.9"])
def test_swin_in_robustbench_normalize_model_is_recognised(tmp_path: Path, names: str) -> None:
    # The zoo's Swin entries are normalize_model(timm Swin); their files predate timm 0.9, whose
    # names RobustBench converts with timm's checkpoint_filter_fn. Swin-T stands in for B and L
    # (checked by keys above), at 224 px: its windows' tables fit that side only.
    timm = pytest.importorskip("timm")
    utils = robustbench("utils_architectures")
    swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=10)
    net = _randomised(utils.normalize_model(swin, *IMAGENET))
    sd = net.state_dict()
    if names == "timm<0.9":
        sd = {k: v for k, v in sd.items() if k.startswith("normalize.")}
        sd.update(_prefixed(_swin_before_timm_0_9(swin), "model."))
    path = tmp_path / "Liu2023Comprehensive_Swin-B.pt"
    torch.save(sd, path)
    model = load_model(path, input_size=224)
    assert model.spec.arch == "timm:swin_tiny_patch4_window7_224"
    assert model.num_blocks == 13
    origin = model.origin
    assert origin is not None
    assert origin["layout"] == "robustbench:swin_tiny_patch4_window7_224"
    assert origin["arch_source"] == "recognised"
    assert origin["trained_input_size"] == 224
    assert origin["normalization"]["source"].startswith("the file: normalize.mean")
    if names == "timm<0.9":
        assert origin["ignored"][0].startswith("relative_position_index, attn_mask (")
    _assert_same_outputs(model, net, 224, batch=1)
    # Asked for 32-px inputs, it is still built at 224 and upsamples them.
    small = load_model(path)
    assert (small.spec.input_size, small.spec.stem_size) == (32, 224)


def _xcit_release_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm XCiT's weights in the names of Facebook's release: ``pos_embeder``, and each
    class-attention block's query, key and value in one ``qkv``."""
    out = {k.replace("pos_embed.", "pos_embeder."): v for k, v in sd.items()}
    for i in range(2):
        for kind in ("weight", "bias"):
            parts = [out.pop(f"cls_attn_blocks.{i}.attn.{n}.{kind}") for n in "qkv"]
            out[f"cls_attn_blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts)
    return out


@pytest.mark.parametrize("names", ["timm", "release"])
def test_xcit_is_recognised(tmp_path: Path, names: str) -> None:
    # Debenedetti2022Light's XCiTs are timm models (nano, the smallest, stands in): recognised
    # from their widths, depths and heads, in timm's names or the release's.
    timm = pytest.importorskip("timm")
    net = _randomised(timm.create_model("xcit_nano_12_p16_224", num_classes=10))
    sd = net.state_dict()
    if names == "release":
        sd = _xcit_release_names(sd)
    path = tmp_path / "xcit.pt"
    torch.save(sd, path)
    model = load_model(path)
    assert model.spec.arch == "timm:xcit_nano_12_p16_224"
    assert model.origin is not None
    assert model.origin["layout"] == "timm:xcit_nano_12_p16_224"
    assert model.origin["trained_input_size"] == 224
    cfg: Any = net.pretrained_cfg
    assert model.spec.mean == pytest.approx(cfg["mean"])
    _assert_same_outputs(model, _normalized(cfg["mean"], cfg["std"], net), 32)


def test_timm_models_that_do_not_split_are_refused_by_name() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ArchitectureError, match="cannot be split into blocks yet; supported: "):
        create_model("timm:efficientnet_b0", 10)
    with pytest.raises(ArchitectureError, match="timm has no model 'nope'"):
        create_model("timm:nope", 10)


# --- ensembles and composite models -----------------------------------------------------------

# RobustBench's composite entries are built by model_zoo/architectures/comp_model.py, which
# imports the whole zoo; their module trees are reproduced from its source around the package's
# own parts, at their published sizes on the meta device (keys and shapes are what is read).


def _bai2023_improving() -> nn.Module:
    """``get_composite_model("edm", "cifar100")``: ``CompositeModelWrapper(parallel=False)``
    around a ``CompositeModel`` of BiT-M-R152x2 (the standard network), DeepMind's WRN-70-16 (the
    robust one), ``MixingNetV4``, a BatchNorm1d on its output and six scalars."""
    bit, dm, mixing = robustbench("bit_rn"), robustbench("dm_rn"), robustbench("mixing_net")
    composite = nn.Module()
    # bit_rn's ResNetV2 moves two constants (plain attributes, in no state dict) to CUDA.
    with torch.device("meta"), mock.patch.object(torch.Tensor, "cuda", lambda t: t):
        standard = bit.KNOWN_MODELS["BiT-M-R152x2"](head_size=100, zero_head=False)
        robust = dm.WideResNet(num_classes=100, depth=70, width=16, activation_fn=nn.SiLU,
                               mean=dm.CIFAR100_MEAN, std=dm.CIFAR100_STD)  # fmt: skip
        composite.add_module("models", nn.ModuleList([standard, robust]))
        composite.add_module("policy_net", mixing.MixingNetV4({"in_planes": (512, 256)}))
        composite.add_module("bn", nn.BatchNorm1d(num_features=1, affine=False, momentum=0.01))
        for name in ("gamma_scale", "gamma_bias", "alpha_scale", "alpha_bias", "std_scale",
                     "rob_scale"):  # fmt: skip
            composite.register_parameter(name, nn.Parameter(torch.tensor(1.0), False))
    wrapper = nn.Module()
    wrapper.add_module("comp_model", composite)
    return wrapper


def _bai2023_mixing_network() -> nn.Module:
    """Bai2023Improving's third file: the mixing network alone (under "model", beside "bn")."""
    mixing = robustbench("mixing_net")
    with torch.device("meta"):
        net: nn.Module = mixing.MixingNetV4({"in_planes": (512, 256)})
    return net


def _mixed_nuts(small: bool = False) -> nn.Module:
    """``get_nonlin_mixed_classifier("cifar100")``: ``NonLinMixedClassifier`` of BiT-M-R152x2 and
    Wang2023Better's WRN-70-16 (``small``: a one-block-per-stage BiT and a WRN-10-1, real
    weights); its alphas are checked on construction, so they are real tensors."""
    bit, dm = robustbench("bit_rn_v2"), robustbench("dm_wide_resnet")
    mixing, maps = robustbench("mixing_net"), robustbench("output_maps")
    with torch.device("cpu" if small else "meta"):
        standard = bit.ResNetV2([1, 1, 1, 1] if small else [3, 8, 36, 3], 1 if small else 2,
                                head_size=100, zero_head=False, return_features=False)  # fmt: skip
        robust = dm.DMWideResNet(num_classes=100, depth=10 if small else 70,
                                 width=1 if small else 16, activation_fn=nn.SiLU,
                                 mean=dm.CIFAR100_MEAN, std=dm.CIFAR100_STD)  # fmt: skip
    settings = {
        "alpha": 0.9,
        "alpha_diffable": 0.9,
        "std_map": maps.HardMaxMap(),
        "rob_map": maps.LNClampPowerScaleMap(scale=0.61, power=2.0, clamp_bias=-2.14, ln_k=250),
    }
    return mixing.NonLinMixedClassifier(standard, robust, settings)  # type: ignore[no-any-return]


def _chen2020_adversarial() -> nn.Module:
    """cifar10.py's ``Chen2020AdversarialNet``: three ResNet-50 branches, also held as
    ``models``, and ``mu``/``sigma``."""
    rn = robustbench("resnet")
    net = nn.Module()
    with torch.device("meta"):
        branches = [rn.ResNet(rn.BottleneckChen2020AdversarialNet, [3, 4, 6, 3]) for _ in "123"]
    for i, branch in enumerate(branches, 1):
        net.add_module(f"branch{i}", branch)
    net.add_module("models", nn.ModuleList(branches))
    net.register_buffer("mu", torch.tensor(IMAGENET[0]).view(1, 3, 1, 1))
    net.register_buffer("sigma", torch.tensor(IMAGENET[1]).view(1, 3, 1, 1))
    return net


@pytest.mark.parametrize(
    ("build", "what"),
    [
        (_bai2023_improving, "RobustBench's CompositeModel (Bai2023Improving"),
        (_bai2023_mixing_network, "the mixing network of RobustBench's CompositeModel"),
        (_mixed_nuts, "RobustBench's NonLinMixedClassifier (Bai2024MixedNUTS"),
        (_chen2020_adversarial, "an ensemble of networks under models.N"),
    ],
    ids=["Bai2023Improving", "its-mixing-network", "Bai2024MixedNUTS", "Chen2020Adversarial"],
)
def test_ensembles_and_composites_are_refused_as_what_they_are(
    build: Callable[[], nn.Module], what: str
) -> None:
    fake = {k: torch.empty(v.shape, device="meta") for k, v in build().state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        unwrap(fake)
    message = str(err.value)
    assert message.startswith("these weights are an ensemble/composite entry of RobustBench's zoo")
    assert what in message
    assert "not supported as a transfer source" in message
    assert "no single sequence of blocks to cut at k" in message


def test_a_composite_file_is_refused_with_one_message(tmp_path: Path) -> None:
    # MixedNUTS' layout (smaller networks, real weights) through load_model: one line saying
    # what it is and why, not a list of keys, whatever architecture is named.
    path = tmp_path / "Bai2024MixedNUTS.pt"
    torch.save(_mixed_nuts(small=True).state_dict(), path)
    for arch in (None, "robustbench:dm-wrn-10-1"):
        with pytest.raises(CheckpointError) as err:
            load_model(path, arch=arch)
        message = str(err.value)
        assert "Bai2024MixedNUTS" in message
        assert "no single sequence of blocks to cut at k" in message
        assert "missing" not in message
        assert "\n" not in message


# --- plain torchvision weights, the class list, the threat model ------------------------------


@pytest.fixture
def torchvision_resnet18(tmp_path: Path) -> tuple[Path, nn.Module]:
    import torchvision

    net = _randomised(torchvision.models.resnet18())
    path = tmp_path / "resnet18.pt"
    torch.save(net.state_dict(), path)
    return path, net


def test_plain_torchvision_weights_are_recognised(torchvision_resnet18: Any) -> None:
    path, net = torchvision_resnet18
    model = load_model(path, input_size=64)
    assert model.spec.arch == "torchvision:resnet18"
    assert model.origin is not None
    assert model.origin["layout"] == "torchvision:resnet18"
    assert "ImageNet" in model.origin["normalization"]["source"]
    assert guess_in_channels(path) == 3
    _assert_same_outputs(model, _normalized(*IMAGENET, net), 64)


def test_a_wrong_arch_for_torchvision_weights_names_the_right_one(
    torchvision_resnet18: Any,
) -> None:
    # The README's former hint, arch=resnet18-cifar, on torchvision's own weights.
    path, _ = torchvision_resnet18
    with pytest.raises(CheckpointError) as err:
        load_model(path, arch="resnet18-cifar")
    message = str(err.value)
    assert "does not fit resnet18-cifar" in message
    assert "give the architecture torchvision:resnet18" in message
    assert "\n" not in message


def test_an_imagenet_head_is_summarised_not_listed(torchvision_resnet18: Any) -> None:
    path, _ = torchvision_resnet18
    description = describe_model(load_model(path), format=PLAIN_FORMAT)
    assert "class_names" not in description
    assert description["classes"] == "1000 classes, numbered 0-999 (the weights name none)"
    assert description["origin"]["layout"] == "torchvision:resnet18"


def test_cartl_inspect_says_what_was_recognised(
    torchvision_resnet18: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli.library import main

    path, _ = torchvision_resnet18
    assert main(["inspect", str(path)]) == 0
    out, err = capsys.readouterr()
    description = json.loads(out)
    assert description["format"] == "plain-state-dict"
    assert description["origin"]["layout"] == "torchvision:resnet18"
    assert "recognised torchvision:resnet18" in err
    assert len(out.splitlines()) < 100  # no 1,000-line list of class numbers
    assert main(["inspect", str(path), "--arch", "resnet18-cifar"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("cartl: error: ")
    assert "torchvision:resnet18" in line


def test_unrecognised_plain_weights_still_need_an_arch(tmp_path: Path) -> None:
    path = tmp_path / "mlp.pt"
    torch.save({"fc1.weight": torch.zeros(4, 3), "fc1.bias": torch.zeros(4)}, path)
    with pytest.raises(CheckpointError, match="no layout cartl recognises; give the architecture"):
        load_model(path)


def test_the_stated_threat_model_is_recorded(tmp_path: Path) -> None:
    """A transfer from published weights (which record no threat model) with --source-eps: the
    result's header records it, and the final audit and trace default to it."""
    import numpy as np

    from cartl_core import read_description
    from cartl_core.jobs import parse_params, run_job

    dm = robustbench("dm_wide_resnet")
    source = tmp_path / "Gowal2020Uncovering.pt"
    net = dm.DMWideResNet(num_classes=10, depth=10, width=1, activation_fn=dm.Swish)
    torch.save(net.state_dict(), source)
    rng = np.random.default_rng(0)
    data = tmp_path / "target.npz"
    np.savez(
        data,
        x_train=rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(24) % 2,
        x_test=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(8) % 2,
    )
    params = parse_params(
        "transfer",
        {"method": "standard", "k": 2, "epochs": 1, "batch_size": 12, "augment": "none",
         "trace_samples": 0, "source_eps": 2 / 255, "source_norm": "l2", "no_audit": True},
    )  # fmt: skip
    threat = params.source_threat(None)
    assert params.config(threat).trace.eps == pytest.approx(2 / 255)
    audit = params.audit_config(threat)
    assert (audit.eps, audit.norm) == ((pytest.approx(2 / 255),), "l2")
    out = tmp_path / "target.safetensors"
    run_job("transfer", params, dataset_path=data, checkpoint_path=source, out_path=out)
    header = read_description(out)
    assert header is not None
    assert header["training"]["threat"] == {"eps": pytest.approx(2 / 255), "norm": "l2"}
    # Where the weights came from travels with them.
    assert header["origin"]["layout"] == "robustbench:dm-wrn-10-1"


def test_a_stated_norm_needs_its_radius() -> None:
    from cartl_core.jobs import parse_params

    with pytest.raises(ConfigError) as err:
        parse_params("transfer", {"source_norm": "l2"})
    assert err.value.field == "source_eps"
    with pytest.raises(ConfigError) as err:
        parse_params("transfer", {"source_eps": 8})
    assert err.value.field == "source_eps"
