"""No code path unpickles untrusted data: a planted pickle with a __reduce__ payload is refused and never runs."""
from __future__ import annotations

import pickle

import pytest
import torch

from mambaverse.errors import MambaverseError

TINY = {"d_model": 16, "n_layer": 1, "d_state": 4}


class _Payload:
    """Unpickling this calls `open(marker, "w")`: a stand-in for arbitrary code in a hostile checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"backbone.x": torch.zeros(1)}, "payload": _Payload(marker)}, f)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_genomics_pretrained_ckpt_refuses_a_pickle_payload(tmp_path, suffix):
    from mambaverse.genomics import DNAClassifier

    marker, planted = tmp_path / "pwned", tmp_path / f"evil{suffix}"
    _plant(planted, marker)
    with pytest.raises(MambaverseError, match="pretrained_ckpt: .*evil"):
        DNAClassifier(num_classes=2, backbone="caduceus_ps_tiny", backbone_overrides=TINY, pretrained_ckpt=str(planted))
    assert not marker.exists(), "the pickle payload ran"


def test_a_plain_torch_save_checkpoint_still_loads(tmp_path):
    from mambaverse.genomics import DNAClassifier

    src = DNAClassifier(num_classes=2, backbone="caduceus_ps_tiny", backbone_overrides=TINY)
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": src.state_dict(), "epoch": 3, "hyper_parameters": {"num_classes": 2}}, path)
    dst = DNAClassifier(num_classes=2, backbone="caduceus_ps_tiny", backbone_overrides=TINY, pretrained_ckpt=str(path))
    for name, value in src.backbone.state_dict().items():
        assert torch.equal(dst.backbone.state_dict()[name], value), name


def test_no_unsafe_torch_load_in_the_sources():
    """Every torch.load in the package passes weights_only=True (a grep, so a new call site cannot slip in)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    offenders = []
    for path in root.glob("*/**/*.py"):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.relative_to(root)}: {m.group(0)}")
        if re.search(r"\bpickle\.loads?\(|\bnp\.load\([^)]*allow_pickle=True", text):
            offenders.append(f"{path.relative_to(root)}: pickle/np.load(allow_pickle=True)")
    assert not offenders, offenders
