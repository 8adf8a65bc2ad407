"""A source of another input size than the target's: it resamples the target's images inside
itself (ModelSpec ``input_size`` = what it is fed, ``stem_size`` = what its stem was built for),
survives save and load, and transfers and audits run on the target's own pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cartl_core import (
    CompareConfig,
    ConfigError,
    create_model,
    load_model,
    pgd,
    read_description,
    save_checkpoint,
)
from cartl_core.compare import CostEstimate, estimate_cost, plan_candidates
from cartl_core.config import AuditConfig
from cartl_core.data import Dataset, Resize
from cartl_core.jobs import parse_params, run_job
from cartl_core.kinds._shared import load_for_data
from cartl_core.models import ModelSpec
from cartl_core.options import option_specs, parse_text

from .conftest import make_dataset


def _npz(path: Path, data: Dataset) -> Path:
    def nhwc(x: torch.Tensor) -> np.ndarray:
        return (x.numpy() * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)

    np.savez(
        path,
        x_train=nhwc(data.train.images),
        y_train=data.train.labels.numpy(),
        x_test=nhwc(data.test.images),
        y_test=data.test.labels.numpy(),
    )
    return path


def test_forward_equals_the_source_on_interpolated_images() -> None:
    source = create_model("small-cnn", 4, in_channels=3, input_size=32).eval()
    fed = create_model("small-cnn", 4, in_channels=3, input_size=32).eval()
    fed.load_state_dict(source.state_dict())
    fed.set_input_size(16)
    assert (fed.spec.input_size, fed.spec.stem_size, fed.spec.resample) == (16, 32, "bilinear")
    assert fed.spec.resample_cost == 4.0
    x = torch.rand(5, 3, 16, 16)
    # Upsampling: plain bilinear (antialiasing only matters when an image shrinks).
    up = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=False)
    with torch.no_grad():
        torch.testing.assert_close(fed(x), source(up), rtol=0, atol=1e-6)
        torch.testing.assert_close(fed.frozen_part(x, 2), source.frozen_part(up, 2))
        torch.testing.assert_close(fed.penultimate(x), source.penultimate(up))
    # Shrinking is antialiased, as an image library shrinks.
    fed.set_input_size(48, "bicubic")
    big = torch.rand(2, 3, 48, 48)
    down = F.interpolate(big, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(fed(big), source(down), rtol=0, atol=1e-6)
    # The model is described, and checked, by what it is fed.
    fed.check_input_size(48, 48)
    with pytest.raises(ConfigError, match=r"32x32 .* takes 48x48") as exc:
        fed.check_input_size(32, 32)
    assert exc.value.field == "resize"
    # Back to the stem's own size: nothing is resampled.
    fed.set_input_size(32)
    assert (fed.spec.input_size, fed.spec.stem_size) == (32, None)
    assert isinstance(fed.resample, torch.nn.Identity)


def test_attacks_perturb_the_images_as_they_are() -> None:
    model = create_model("small-cnn", 3, in_channels=1, input_size=32).eval()
    model.set_input_size(16)
    x, y = torch.rand(4, 1, 16, 16), torch.arange(4) % 3
    x_adv = pgd(model, x, y, 0.1, 0.05, 3)
    assert x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert x_adv.min() >= 0
    assert x_adv.max() <= 1


def test_resampling_survives_save_and_load_and_old_headers_load_as_before(
    tmp_path: Path,
) -> None:
    model = create_model("small-cnn", 4, in_channels=1, input_size=32).eval()
    model.set_input_size(16, "nearest")
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path)
    description = read_description(path)
    assert description is not None
    assert description["input_shape"] == [1, 16, 16]
    assert (description["model"]["stem_size"], description["model"]["resample"]) == (
        32,
        "nearest",
    )
    loaded = load_model(path)
    assert loaded.spec == model.spec
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # The same weights under a header written before the fields existed: as they were then.
    old = {k: v for k, v in description["model"].items() if k not in ("stem_size", "resample")}
    assert ModelSpec.from_dict(old).stem_size is None
    plain = create_model("small-cnn", 4, in_channels=1, input_size=32)
    old_path = tmp_path / "old.safetensors"
    save_file(
        load_file(str(path)),
        str(old_path),
        metadata={"cartl": json.dumps({**description, "model": {**old, "input_size": 32}})},
    )
    again = load_model(old_path)
    assert (again.spec.input_size, again.spec.stem_size) == (32, None)
    assert isinstance(again.resample, torch.nn.Identity)
    assert again.state_dict().keys() == plain.state_dict().keys()


def test_a_transfer_from_a_64px_source_onto_16px_data_audits_16px_inputs(tmp_path: Path) -> None:
    source = tmp_path / "source.safetensors"
    # Narrow stages: a 64-px pass costs 16 16-px passes, and the test must stay quick.
    narrow = {"fc_width": 0, "stages": [[8, True], [8, True], [8, False]]}
    save_checkpoint(
        create_model("small-cnn", 4, in_channels=1, input_size=64, options=narrow), source
    )
    data = _npz(tmp_path / "d.npz", make_dataset(size=16, n_train=64, n_test=16))
    out = tmp_path / "t.safetensors"
    run_job(
        "transfer",
        {
            "method": "standard",
            "k": 2,
            "epochs": 1,
            "batch_size": 32,
            "augment": "none",
            "trace_samples": 0,
            "no_audit": True,
        },
        dataset_path=data,
        checkpoint_path=source,
        out_path=out,
        device="cpu",
    )
    description = read_description(out)
    assert description is not None
    assert description["input_shape"] == [1, 16, 16]
    assert (description["model"]["stem_size"], description["model"]["resample"]) == (
        64,
        "bilinear",
    )
    outcome = run_job(
        "audit",
        {
            "attacks": "fast",
            "apgd_steps": 2,
            "steps": 2,
            "restarts": 1,
            "check_samples": 4,
            "limit": 8,
            "no_fgsm": True,
        },
        dataset_path=data,
        checkpoint_path=out,
        device="cpu",
    )
    assert outcome.metrics["samples"] == 8
    assert 0 <= outcome.metrics["robust_accuracy"] <= outcome.metrics["clean_accuracy"]
    # The attacked model takes the 16-px images: the attacks perturb them, not an upsampled copy.
    model = load_model(out)
    assert model.spec.input_size == 16
    model.check_input_size(16, 16)


def test_published_imagenet_weights_upsample_the_targets_images(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    data = make_dataset(num_classes=3, channels=3, size=32, n_train=8, n_test=4)
    # Recognised as torchvision's ResNet-18, trained at 224 px: built so, fed the 32-px images.
    model = load_for_data(path, data, "bicubic")
    assert (model.spec.input_size, model.spec.stem_size, model.spec.resample) == (
        32,
        224,
        "bicubic",
    )
    assert model.spec.resample_cost == 49.0
    # Plain weights of no known size are built at the data's: nothing to resample.
    plain = tmp_path / "cnn.pt"
    torch.save(create_model("small-cnn", 3, in_channels=3, input_size=8).state_dict(), plain)
    model = load_for_data(plain, data, "bilinear", arch="small-cnn")
    assert (model.spec.input_size, model.spec.stem_size) == (32, None)


def test_the_dataset_uploads_resize_and_the_jobs_own(tmp_path: Path) -> None:
    source = tmp_path / "source.safetensors"
    save_checkpoint(create_model("small-cnn", 4, in_channels=1, input_size=8), source)
    data = _npz(tmp_path / "d.npz", make_dataset(size=12, n_train=32, n_test=8))
    out = tmp_path / "t.safetensors"
    fast = {"method": "standard", "k": 1, "epochs": 1, "augment": "none", "trace_samples": 0,
            "no_audit": True}  # fmt: skip

    def transferred(**params: object) -> list[int]:
        outcome = run_job("transfer", {**fast, **params}, dataset_path=data,
                          checkpoint_path=source, out_path=out, device="cpu",
                          dataset_resize=Resize(16, "nearest"))  # fmt: skip
        # The provenance says how the stored file was read.
        assert outcome.provenance["dataset"]["resize"] == {"size": 16, "method": "nearest"}
        description = read_description(out)
        assert description is not None
        return [description["input_shape"][1], description["model"]["stem_size"]]

    # The upload's resize, unless the job names its own (true: the source's input size).
    assert transferred() == [16, 8]
    assert transferred(resize=True) == [8, None]
    assert transferred(resize=10, resize_method="area") == [10, 8]


def test_the_cost_estimate_states_the_resampling_factor() -> None:
    source = create_model("small-cnn", 3, in_channels=1, input_size=32)
    source.set_input_size(8)
    config = CompareConfig(eps=0.1, methods=("standard",), ks=(1,), max_candidates=1)
    plan, _ = plan_candidates(source, config)
    estimate = estimate_cost(
        source,
        plan,
        config,
        train=make_dataset(num_classes=3, size=8, n_train=16).train,
        audited=4,
        num_classes=3,
        audit=AuditConfig(eps=(0.1,), attacks="fast", apgd_steps=1),
    )
    assert estimate.resample == {
        "input_size": 8,
        "stem_size": 32,
        "method": "bilinear",
        "cost_factor": 16.0,
    }
    assert estimate.to_dict()["resample"]["cost_factor"] == 16.0
    assert "runs at 32 px on 8-px images" in estimate.text()
    assert "16x the FLOPs" in estimate.text()
    # A source of the target's own size says nothing of it.
    plain = CostEstimate(candidates=1, train_seconds=1.0, audit_seconds_max=1.0, per_candidate=[])
    assert "runs at" not in plain.text()


def test_the_resize_parameter_takes_off_true_or_a_side() -> None:
    (spec,) = [s for s in option_specs(type(parse_params("audit", {}))) if s.name == "resize"]
    assert [parse_text(spec, t) for t in ("true", "false", "32")] == [True, False, 32]
    for text, message in (("4", "at least 8"), ("2000", "at most 1024"), ("big", "true or false")):
        with pytest.raises(ValueError, match=message):
            parse_text(spec, text)
    assert parse_params("audit", {"resize": 32, "resize_method": "area"}).resize == 32
    with pytest.raises(ConfigError) as exc:
        parse_params("transfer", {"resize": 2})
    assert exc.value.field == "resize"
