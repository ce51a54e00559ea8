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


def writer_loop(root: str) -> None:
    """Rewrite every kind of atomic output under ``root`` forever, alternating two versions "a" and "b" that
    differ in content and shape: a save_pretrained folder (two models of different d_state), the genomics
    prediction writer's set, a metrics JSON and a Lightning checkpoint. tests/test_atomic_writes.py kills this
    process at random moments and checks that each output is wholly one version. Writes ``root/ready`` once
    both versions of every output have been written."""
    from types import SimpleNamespace

    import torch

    import mambaverse as mv
    from mambaverse.genomics.metrics import atomic_write_json
    from mambaverse.genomics.writer import EmbeddingWriter
    from mambaverse.training import AtomicCheckpointIO

    torch.set_num_threads(1)
    out = Path(root)
    models = {v: mv.create_model("causal_tiny", d_model=64, n_layer=2, d_state=d, backend="torch")
              for v, d in (("a", 4), ("b", 8))}
    rows = {"a": 50, "b": 80}

    def preds(v):
        n = rows[v]
        p = {"embedding": torch.full((n, 8), float(ord(v))), "record": [v] * n, "start": list(range(n)),
             "end": list(range(1, n + 1)), "strand": ["+"] * n, "label": [0] * n, "file": ["f.fa"] * n}
        if v == "a":  # only version a is a classifier: probs.npy must come and go with it
            p["probs"] = torch.full((n, 2), 0.5)
        return [p]

    writer = EmbeddingWriter(str(out / "pred"))
    trainer = SimpleNamespace(datamodule=None)
    io = AtomicCheckpointIO()
    i = 0
    while True:
        v = "ab"[i % 2]
        mv.save_pretrained(models[v], out / "model")
        writer.write_on_epoch_end(trainer, None, preds(v), None)
        atomic_write_json(out / "test_metrics.json", {"version": v, "rows": list(range(rows[v] * 20))})
        io.save_checkpoint({"version": v, "w": torch.full((rows[v] * 100,), float(ord(v)))}, out / "last.ckpt")
        if i == 1:
            (out / "ready").write_text("ready")
        i += 1


class StopTraining(pl.Callback):
    """Ask the trainer to stop after step ``step``, as Lightning's ``max_time`` Timer does when time is up."""

    def __init__(self, step: int = 0):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.step and trainer.global_step >= self.step:
            trainer.should_stop = True
