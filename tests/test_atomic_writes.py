"""Atomic outputs: writers killed at random moments leave each output all old or all new, never a mix; no
temporary outlives its writer (one a killed writer left is removed by the next write); files get the umask's
mode. Real writers throughout: save_pretrained, the genomics prediction writer, the metrics JSON, Lightning
checkpoints through AtomicCheckpointIO (tests/_kill_helpers.writer_loop runs them in a subprocess)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mambaverse as mv
from mambaverse.atomic import atomic_write_bytes, sweep, write_set
from mambaverse.errors import ConfigError
from mambaverse.genomics.metrics import atomic_write_json
from mambaverse.genomics.writer import EmbeddingWriter

ROOT = Path(__file__).resolve().parents[1]


def _versions_of(root: Path) -> dict:
    """The version ("a" or "b") each output holds; fails on a mixed or unreadable output."""
    got = {}
    model = mv.from_pretrained(root / "model")  # a mixed pair (weights of one, config of the other) fails here
    d_state = model.config["d_state"]
    got["model"] = {4: "a", 8: "b"}[d_state]
    emb = np.load(root / "pred" / "embeddings.npy")
    coords = (root / "pred" / "coords.tsv").read_text().splitlines()[1:]
    v = chr(int(emb[0, 0]))
    assert (emb == ord(v)).all() and len(emb) == len(coords) == {"a": 50, "b": 80}[v]
    assert all(line.split("\t")[2] == v for line in coords)
    probs = root / "pred" / "probs.npy"
    assert probs.exists() == (v == "a")  # written with a, dropped with b
    if v == "a":
        assert np.load(probs).shape == (50, 2)
    got["pred"] = v
    metrics = json.loads((root / "test_metrics.json").read_text())
    assert len(metrics["rows"]) == {"a": 50, "b": 80}[metrics["version"]] * 20
    got["metrics"] = metrics["version"]
    ckpt = torch.load(root / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["w"].numel() == {"a": 50, "b": 80}[ckpt["version"]] * 100
    got["ckpt"] = ckpt["version"]
    return got


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def test_writers_killed_at_random_points_leave_all_old_or_all_new(tmp_path):
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    roots = [tmp_path / f"w{i}" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", f"import _kill_helpers; _kill_helpers.writer_loop({str(r)!r})"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for r in roots]
    seen = set()
    for root, proc in zip(roots, procs):
        deadline = time.monotonic() + 240
        while not (root / "ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"writer loop did not start (status {proc.poll()}): {proc.communicate()[1][-2000:]}")
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.8))  # a random point of the loop: inside a write, a swap, or between files
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        versions = _versions_of(root)
        seen.update(versions.values())
        # what the killed writer left behind goes with the next write of each output
        model = mv.create_model("causal_tiny", d_model=64, n_layer=2, d_state=4, backend="torch")
        mv.save_pretrained(model, root / "model")
        EmbeddingWriter(str(root / "pred")).write_on_epoch_end(SimpleNamespace(datamodule=None), None, [{
            "embedding": torch.zeros(3, 2), "record": ["r"] * 3, "start": [0, 1, 2], "end": [1, 2, 3],
            "strand": ["+"] * 3, "label": [0] * 3, "file": ["f"] * 3}], None)
        atomic_write_json(root / "test_metrics.json", {})
        from mambaverse.training import AtomicCheckpointIO
        AtomicCheckpointIO().save_checkpoint({}, root / "last.ckpt")
        assert _leftovers(root) == [], "temporaries outlived their writer"
        assert sorted(p.name for p in (root / "pred").iterdir()) == ["coords.tsv", "embeddings.npy"]
    assert seen <= {"a", "b"}


def test_a_failing_set_leaves_the_old_set_and_no_temporary(tmp_path):
    folder = tmp_path / "set"
    write_set(folder, {"x.txt": lambda p: p.write_text("old x"), "y.txt": lambda p: p.write_text("old y")})
    (folder / "notes.md").write_text("kept")

    def boom(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_set(folder, {"x.txt": lambda p: p.write_text("new x"), "y.txt": boom})
    assert (folder / "x.txt").read_text() == "old x" and (folder / "y.txt").read_text() == "old y"
    assert sorted(os.listdir(tmp_path)) == ["set"] and sorted(os.listdir(folder)) == ["notes.md", "x.txt", "y.txt"]
    write_set(folder, {"x.txt": lambda p: p.write_text("new x")}, stale=("y.txt",))
    assert sorted(os.listdir(folder)) == ["notes.md", "x.txt"] and (folder / "notes.md").read_text() == "kept"
    with pytest.raises(ConfigError, match="is a file"):
        mv.save_pretrained(mv.create_model("causal_tiny", d_model=16, n_layer=1), folder / "x.txt")


def test_save_pretrained_with_an_unserialisable_config_leaves_the_folder_loadable(tmp_path):
    model = mv.create_model("causal_tiny", d_model=16, n_layer=1, d_state=4)
    mv.save_pretrained(model, tmp_path / "m")
    other = mv.create_model("causal_tiny", d_model=16, n_layer=1, d_state=8)
    other.config["norm_eps"] = np.float32(1e-5)  # numpy scalars are written as plain numbers
    mv.save_pretrained(other, tmp_path / "m")
    assert mv.from_pretrained(tmp_path / "m").config["d_state"] == 8
    other.config["mixer_options"] = {"bad": object()}
    with pytest.raises(TypeError):
        mv.save_pretrained(other, tmp_path / "m")
    assert mv.from_pretrained(tmp_path / "m").config["d_state"] == 8
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        mv.save_pretrained(mv.create_model("causal_tiny", d_model=16, n_layer=1), tmp_path / "m")
        EmbeddingWriter(str(tmp_path / "pred")).write_on_epoch_end(SimpleNamespace(datamodule=None), None, [{
            "embedding": torch.zeros(1, 2), "probs": torch.ones(1, 2), "record": ["r"], "start": [0], "end": [1],
            "strand": ["+"], "label": [0], "file": ["f"]}], None)
        atomic_write_bytes(tmp_path / "plot.png", b"\x89PNG")
        from mambaverse.training import AtomicCheckpointIO
        AtomicCheckpointIO().save_checkpoint({"a": 1}, tmp_path / "c" / "last.ckpt")
        # the FASTA cache: a decompressed, cleaned copy and its index
        import gzip

        from mambaverse.genomics.fasta import prepare_fasta
        (tmp_path / "in").mkdir()
        with gzip.open(tmp_path / "in" / "x.fa.gz", "wt") as fh:
            fh.write(">r\nACGT \nACGT\n")
        src = prepare_fasta(tmp_path / "in" / "x.fa.gz", cache_dir=tmp_path / "fa_cache")
    finally:
        os.umask(old)
    assert src.records == [("r", 8)]
    (tmp_path / "in" / "x.fa.gz").unlink()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 9
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~mask


def test_sweep_removes_only_dead_writers_temporaries(tmp_path):
    final = tmp_path / "out.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    from mambaverse.atomic import _HOST
    stale = tmp_path / f".out.json.tmp-{_HOST}-{pid}-00000000"
    live = tmp_path / f".out.json.tmp-{_HOST}-{os.getppid()}-00000000"
    other_host = tmp_path / f".out.json.tmp-elsewhere-{pid}-00000000"
    for p in (stale, live, other_host):
        p.write_text("x")
    assert sweep(final) == [stale]
    assert live.exists() and other_host.exists()
