"""A stop request reaches every long loop of the library within one step, whatever the step
counts asked for: the attacks' steps, restarts and queries, the clean passes, the robust trace,
training, and reading a dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from cartl_core import CancelledError, audit, create_model, load_dataset
from cartl_core._stop import check_stop, stop_when
from cartl_core.attacks import apgd, apgd_targeted, fab_targeted, pgd, robust_mask, square
from cartl_core.config import AuditConfig, TraceConfig
from cartl_core.data import Dataset
from cartl_core.training.loop import evaluate_accuracy
from cartl_core.training.trace import RobustTrace
from tests.core.conftest import make_dataset
from tests.core.data_builders import imagefolder_files, write_zip


class After:
    """Says stop from its ``n``-th question on; counts the questions."""

    def __init__(self, n: int) -> None:
        self.n, self.asked = n, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked >= self.n


@pytest.fixture
def model() -> torch.nn.Module:
    return create_model("small-cnn", 4, in_channels=1, input_size=8).eval()


@pytest.fixture
def data() -> Dataset:
    return make_dataset(n_test=64)


# Step counts no test could wait for: only the stop ends them.
ATTACKS: dict[str, Callable[..., Any]] = {
    "pgd": lambda m, x, y: pgd(m, x, y, eps=0.1, alpha=0.01, steps=10**7),
    "pgd-restarts": lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 2, restarts=10**7),
    "robust-mask": lambda m, x, y: robust_mask(m, x, y, eps=1e-6, alpha=1e-7, steps=10**7),
    "apgd": lambda m, x, y: apgd(m, x, y, eps=1e-6, steps=10**7),
    "apgd-t": lambda m, x, y: apgd_targeted(m, x, y, eps=1e-6, steps=10**7, targets=3),
    "fab-t": lambda m, x, y: fab_targeted(m, x, y, eps=1e-6, steps=10**7, targets=3),
    "square": lambda m, x, y: square(m, x, y, eps=1e-6, queries=10**7),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_stops_within_a_step(name: str, model: torch.nn.Module, data: Dataset) -> None:
    x, y = data.test.images[:16], data.test.labels[:16]
    stop = After(5)
    with stop_when(stop), pytest.raises(CancelledError, match="stopped during"):
        ATTACKS[name](model, x, y)
    assert stop.asked == 5


def test_an_audit_stops_inside_its_attack(model: torch.nn.Module, data: Dataset) -> None:
    stop = After(20)
    cfg = AuditConfig(eps=(1e-6,), attacks="square", square_queries=10**6)
    with pytest.raises(CancelledError):
        audit(model, data.test, cfg, should_stop=stop)
    assert stop.asked == 20
    check_stop("after the audit: its block is closed, nothing asks any more")


def test_the_clean_pass_and_the_trace_stop(model: torch.nn.Module, data: Dataset) -> None:
    with stop_when(After(2)), pytest.raises(CancelledError, match="evaluation"):
        evaluate_accuracy(model, data.test, batch_size=8)
    cfg = TraceConfig(steps=10**6, samples=64, min_samples=64).resolved(0.1, "linf")
    trace = RobustTrace(model, data.test, cfg, size=64, device=torch.device("cpu"))
    stop = After(3)
    with stop_when(stop), pytest.raises(CancelledError):
        trace()
    assert stop.asked == 3


def test_reading_a_dataset_stops_between_files(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "folder.zip", imagefolder_files(per_class=20))
    assert len(load_dataset(archive).train) == 40
    stop = After(3)
    with stop_when(stop), pytest.raises(CancelledError, match="dataset"):
        load_dataset(archive)
    assert stop.asked == 3


def test_nested_blocks_stop_when_either_says_so() -> None:
    with stop_when(lambda: False), stop_when(None):
        check_stop("nothing asks to stop")
        with stop_when(After(1)), pytest.raises(CancelledError):
            check_stop("the inner block says stop")
        check_stop("the outer block still does not")
    with stop_when(After(1)), stop_when(lambda: False), pytest.raises(CancelledError):
        check_stop("the outer block says stop")


def test_run_job_asks_its_should_stop_from_the_first_file_it_reads(tmp_path: Path) -> None:
    from cartl_core.jobs import parse_params, run_job

    archive = write_zip(tmp_path / "folder.zip", imagefolder_files(per_class=20))
    params = parse_params("pretrain", {"arch": "small-cnn", "epochs": 1})
    stop = After(1)
    with pytest.raises(CancelledError, match="dataset"):
        run_job("pretrain", params, dataset_path=archive, checkpoint_path=None,
                out_path=tmp_path / "out.safetensors", should_stop=stop)  # fmt: skip
    assert stop.asked == 1
    check_stop("after the job: nothing asks any more")
