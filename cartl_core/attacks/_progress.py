"""Where an attack stands, for its ``on_step`` callback: runs (restarts, target classes) of
``steps`` steps each, one count over all of them."""

from __future__ import annotations

from collections.abc import Callable

from cartl_core._runtime import StepFn


class StepCounter:
    """Run ``r``'s step ``i`` is step ``r * steps + i`` of ``runs * steps``; a run cut short
    (every sample broken) is made up for by the next run's start or by :meth:`finish`."""

    def __init__(self, runs: int, steps: int, on_step: StepFn | None) -> None:
        self.steps, self.total, self.on_step = steps, runs * steps, on_step

    def run(self, r: int) -> Callable[[int], None]:
        """The callback for run ``r``: it takes the steps done within that run."""

        def at(i: int) -> None:
            if self.on_step is not None:
                self.on_step(r * self.steps + i, self.total)

        return at

    def finish(self) -> None:
        if self.on_step is not None:
            self.on_step(self.total, self.total)
