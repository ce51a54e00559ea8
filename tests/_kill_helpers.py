"""Helpers that tests/test_resume.py puts on the PYTHONPATH of the training subprocesses it kills.

``StopAfterStep`` marks (with a file) that step ``k`` has finished and then holds the process there, so that the
test's signal (SIGKILL or SIGTERM, sent from outside by the test process) lands at a known step. Nothing here
changes what is trained; a run without ``mark`` set is a plain run.
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl


class StopAfterStep(pl.Callback):
    def __init__(self, step: int = 0, mark: str | None = None, hold_s: float = 120.0):
        self.step, self.mark, self.hold_s = step, mark, hold_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.mark or trainer.global_step != self.step:
            return
        Path(self.mark).write_text(str(trainer.global_step))
        t0 = time.monotonic()
        # wait for the test's signal; SIGTERM sets Lightning's flag (its handler runs during the sleep)
        while time.monotonic() - t0 < self.hold_s and not trainer.received_sigterm:
            time.sleep(0.02)
