"""Classification metrics (scikit-learn) and the confusion-matrix PNG, written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from mambaverse.atomic import atomic_write_bytes as _atomic_write_bytes
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef


def classification_metrics(y_true, y_pred, num_classes: int) -> dict:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(num_classes))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(y_true, y_pred)) if len(y_true) else 0.0,
        "n": int(len(y_true)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` under a temporary name in its folder, then rename (mode per the umask;
    :func:`mambaverse.atomic.atomic_write_bytes`)."""
    return _atomic_write_bytes(path, data)


def atomic_write_json(path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_figure(fig, path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def save_confusion_png(cm, class_names: list[str], path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n, 1.0 + 0.6 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    vmax = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > vmax / 2 else "black",
                    fontsize=8)
    if title:
        ax.set_title(title)
    out = save_figure(fig, path)
    plt.close(fig)
    return out
