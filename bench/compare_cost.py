"""What ``compare`` costs against the same candidates run as separate transfers, in one run.

Both sides do the same work per candidate: ``transfer`` on the training split minus the held-out
validation part, then the ``fast`` ensemble on the validation part and on the test split. The
"separate" side calls ``cartl_core.transfer`` and ``run_ensemble`` once per candidate, as a user
scripting N transfers would; the other side is one ``cartl_core.compare`` call (which also times
its cost estimate before training). ``ratio`` = separate seconds / compare seconds.

The compare runs twice: computing the frozen part in every batch of every candidate, as separate
transfers do (``share_features=False``), and as it runs by default, training the candidates whose
frozen part is fixed on its features computed once per k. Training seconds are shown apart: the
audits, which attack through the whole model, cannot share anything.

Default task: the demo's (digits 0-4 -> 5-9, small-cnn, Linf 0.2), source from
``bench/transfer_ablation.py``'s cache (FDM lambda 0.05, k 3; trained here if missing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer_ablation import Source, _source

from cartl_core import AuditConfig
from cartl_core.audit import run_ensemble
from cartl_core.compare import CompareEvent, compare, plan_candidates, validation_split
from cartl_core.config import CompareConfig
from cartl_core.data import Dataset
from cartl_core.data.digits import digits_task
from cartl_core.training import transfer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path("bench/results/ablation"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--max-candidates", type=int, default=12)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    source = _source(Source("gap", 0.05, 3), digits_task((0, 1, 2, 3, 4), seed=0), args.cache)
    data = digits_task((5, 6, 7, 8, 9), seed=0)
    config = CompareConfig(
        eps=0.2, epochs=args.epochs, batch_size=64, lr=0.05, augmentation="none",
        max_candidates=args.max_candidates,
    )  # fmt: skip
    plan, _ = plan_candidates(source, config, centre_k=3)

    t0 = time.perf_counter()
    held = validation_split(data.train.labels, config.val_fraction, 0, config.min_val_samples)
    fit = Dataset(data.train.subset(held.train), data.train.subset(held.val), data.class_names,
                  data.format)  # fmt: skip
    audit = AuditConfig(eps=(config.eps,), attacks="fast")
    separate = []
    separate_train = 0.0
    for cand in plan:
        t1 = time.perf_counter()
        model = transfer(source, fit, cand.transfer_config(config), device="cpu", seed=0).model
        separate_train += time.perf_counter() - t1
        # compare seeds each audit's random starts with its seed; so does this side.
        torch.manual_seed(0)
        val = run_ensemble(model, fit.test, audit)
        torch.manual_seed(0)
        test = run_ensemble(model, data.test, audit)
        separate.append((cand.name, val.robust_accuracy, test.robust_accuracy))
    t_separate = time.perf_counter() - t0

    # When each candidate's training and audits started and ended, to set against the estimate.
    runs = {}
    for share in (False, True):
        first: dict[tuple[int, str], float] = {}

        def seen(event: CompareEvent, first: dict[tuple[int, str], float] = first) -> None:
            first.setdefault((event.candidate, event.stage), event.elapsed_s)

        t0 = time.perf_counter()
        result = compare(source, data, config, device="cpu", seed=0, centre_k=3, on_progress=seen,
                         share_features=share)  # fmt: skip
        runs[share] = (result, time.perf_counter() - t0, first)

    print(f"compare cost benchmark: {len(plan)} candidates, digits 0-4 -> 5-9, small-cnn, "
          f"{args.epochs} epochs, {torch.get_num_threads()} CPU threads")  # fmt: skip
    print(f"{'way':<52}{'seconds':>9}{'ratio':>7}{'training s':>12}{'ratio':>7}")
    print(f"{'separate: transfer + 2 audits per candidate':<52}{t_separate:>9.1f}{1.0:>7.2f}"
          f"{separate_train:>12.1f}{1.0:>7.2f}")  # fmt: skip
    for share, label in ((False, "one compare, frozen part in every batch"),
                         (True, "one compare, frozen features shared (default)")):  # fmt: skip
        result, seconds, _ = runs[share]
        trained = sum(c.train_seconds for c in result.candidates)
        print(f"{label:<52}{seconds:>9.1f}{t_separate / seconds:>7.2f}{trained:>12.1f}"
              f"{separate_train / trained:>7.2f}")  # fmt: skip
    result, _, first = runs[True]
    plain = runs[False][0]
    names = {c.name for c in result.candidates if c.name not in result.estimate.not_shared}
    before = sum(c.train_seconds for c in plain.candidates if c.name in names)
    after = sum(c.train_seconds for c in result.candidates if c.name in names)
    print(f"the {len(names)} candidates that share, training only: {before:.1f} s -> "
          f"{after:.1f} s ({before / max(after, 1e-9):.2f}x)")  # fmt: skip
    trained = sum(
        first[i, "audit-val"] - first.get((i, "train"), first[i, "audit-val"])
        for i in range(len(plan))
    )
    audited = sum(first[i, "candidate-done"] - first[i, "audit-val"] for i in range(len(plan)))
    est = result.estimate
    print(f"compare's estimate before training: training {est.train_seconds:.1f} s (measured "
          f"{trained:.1f} s), audits at most {est.audit_seconds_max:.1f} s (measured "
          f"{audited:.1f} s)")  # fmt: skip
    print(f"not sharing: {'; '.join(f'{n} ({why})' for n, why in est.not_shared.items())}")
    gap = max(
        max(abs(r.val_robust - s[1]), abs(r.test_robust - s[2]))
        for r, s in zip(result.candidates, separate, strict=True)
    )
    same = all(
        (a.val_clean, a.val_robust, a.test_clean, a.test_robust)
        == (b.val_clean, b.val_robust, b.test_clean, b.test_robust)
        for a, b in zip(result.candidates, plain.candidates, strict=True)
    )
    print(
        f"largest difference in robust accuracy, compare against separate: {gap:.4f}; "
        f"sharing against not: {'none, every number equal' if same else 'SOME DIFFER'}"
    )
    print(f"chosen: {result.chosen.name} ({result.selection['reason']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
