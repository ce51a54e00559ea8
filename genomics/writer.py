"""EmbeddingWriter: a prediction-writer callback that saves per-window embeddings with coordinates.

Files in ``output_dir``, written as one set (:func:`mambaverse.atomic.write_set`: into a temporary folder
beside it, then swapped in by one atomic exchange), so that the three always come from the same run, even
if the process is killed while writing; other files in ``output_dir`` are kept, and a ``probs.npy`` of an
earlier classifier run goes when the model has no probabilities:

* ``embeddings.npy``: float32 (N, D), one row per window, in prediction order;
* ``coords.tsv``: the matching rows ``index, file, record, start, end, strand, label`` (0-based,
  end exclusive; ``label`` is the class name);
* ``probs.npy``: class probabilities (N, C), when the model is a classifier.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from mambaverse.atomic import write_set


def _npy_writer(array: np.ndarray):
    def write(path: Path) -> None:
        with open(path, "wb") as fh:
            np.save(fh, array)
    return write


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
        files = {"embeddings.npy": _npy_writer(emb), "coords.tsv": lambda p: p.write_text("\n".join(rows) + "\n")}
        if "probs" in preds[0]:
            files["probs.npy"] = _npy_writer(torch.cat([p["probs"] for p in preds]).numpy().astype(np.float32))
        write_set(out, files, stale=("probs.npy",))
        self.written = {name.split(".")[0]: out / name for name in files}
        print(f"mambaverse: wrote {len(emb)} window embeddings ({emb.shape[1]} dims) to {out / 'embeddings.npy'} "
              f"with coordinates in {out / 'coords.tsv'}")
