"""A published robust model uploaded as it is: recognised from its keys (no arch field), and the
answer says what was recognised, without a list of class numbers."""

from __future__ import annotations

import io

import torch
from fastapi.testclient import TestClient

from cartl_core import create_model
from tests.api.helpers import upload

Auth = dict[str, str]


def _deepmind_wrn_file(classes: int) -> bytes:
    """A file in RobustBench's DMWideResNet layout (init_conv, layer.G.block.N, logits): our
    model of it saved under its names, which tests/core/test_published_sources.py checks against
    robustbench's own class."""
    torch.manual_seed(0)
    model = create_model("robustbench:dm-wrn-10-1", classes)
    theirs = {ours: name for name, ours in model.foreign_keys.items()}
    state = {theirs[k]: v for k, v in model.state_dict().items() if k in theirs}
    assert "init_conv.weight" in state
    assert "logits.weight" in state
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_a_published_layout_needs_no_arch_and_the_answer_says_what_it_is(
    client: TestClient, alice: Auth
) -> None:
    content = _deepmind_wrn_file(100)
    r = upload(client, "/v1/checkpoints", alice, "Gowal2020Uncovering.pt", content)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["arch"], body["num_classes"], body["num_blocks"]) == (
        "robustbench:dm-wrn-10-1",
        100,
        5,
    )
    description = body["description"]
    assert description["format"] == "plain-state-dict"
    assert "class_names" not in description
    assert description["classes"] == "100 classes, numbered 0-99 (the weights name none)"
    origin = description["origin"]
    assert origin["layout"] == "robustbench:dm-wrn-10-1"
    assert origin["arch_source"] == "recognised"
    # DeepMind's layouts keep their normalisation in code: the zoo's CIFAR-100 statistics.
    assert origin["normalization"]["mean"] == [0.5071, 0.4865, 0.4409]
    assert "CIFAR-100" in origin["normalization"]["source"]

    # The same bytes again, still without arch: recognised the same way, so the same row.
    again = upload(client, "/v1/checkpoints", alice, "Gowal2020Uncovering.pt", content)
    assert again.status_code in (200, 201), again.text
    assert again.json()["id"] == body["id"]


def test_a_wrong_arch_is_answered_with_the_recognised_one(client: TestClient, alice: Auth) -> None:
    content = _deepmind_wrn_file(10)
    r = upload(client, "/v1/checkpoints", alice, "w.pt", content, arch="robustbench:wrn-10-1")
    assert r.status_code == 422, r.text
    assert "give the architecture robustbench:dm-wrn-10-1" in r.text
