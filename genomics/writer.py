"""EmbeddingWriter: a prediction-writer callback that saves per-window embeddings with coordinates.

Files in ``output_dir`` (each written to a temporary name, then renamed):

* ``embeddings.npy``: float32 (N, D), one row per window, in prediction order;
* ``coords.tsv``: the matching rows ``index, file, record, start, end, strand, label`` (0-based,
  end exclusive; ``label`` is the class name);
* ``probs.npy``: class probabilities (N, C), when the model is a classifier.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from .metrics import atomic_write_bytes


def _as_list(v):
    return v.tolist() if isinstance(v, torch.Tensor) else list(v)


class EmbeddingWriter(BasePredictionWriter):
    def __init__(self, output_dir: str = "runs/genomics_embeddings"):
        super().__init__(write_interval="epoch")
        self.output_dir = Path(output_dir)
        self.written: dict[str, Path] = {}

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        preds = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if not preds:
            return
        emb = torch.cat([p["embedding"] for p in preds]).numpy().astype(np.float32)
        dm = getattr(trainer, "datamodule", None)
        names = list(getattr(dm, "labels", []))
        rows = ["index\tfile\trecord\tstart\tend\tstrand\tlabel"]
        i = 0
        for p in preds:
            cols = [_as_list(p[k]) for k in ("file", "record", "start", "end", "strand", "label")]
            for f, r, s, e, st, lab in zip(*cols):
                lab = names[lab] if names and isinstance(lab, int) and lab < len(names) else lab
                rows.append(f"{i}\t{f}\t{r}\t{s}\t{e}\t{st}\t{lab}")
                i += 1
        out = self.output_dir
        buf = io.BytesIO()
        np.save(buf, emb)
        self.written["embeddings"] = atomic_write_bytes(out / "embeddings.npy", buf.getvalue())
        self.written["coords"] = atomic_write_bytes(out / "coords.tsv", ("\n".join(rows) + "\n").encode())
        if "probs" in preds[0]:
            buf = io.BytesIO()
            np.save(buf, torch.cat([p["probs"] for p in preds]).numpy().astype(np.float32))
            self.written["probs"] = atomic_write_bytes(out / "probs.npy", buf.getvalue())
        print(f"mambaverse: wrote {len(emb)} window embeddings ({emb.shape[1]} dims) to {out / 'embeddings.npy'} "
              f"with coordinates in {out / 'coords.tsv'}")
