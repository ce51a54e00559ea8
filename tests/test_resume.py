"""Exact resume: a run killed (SIGTERM, then SIGKILL) and resumed from last.ckpt ends with the same weights as an
uninterrupted run. The fits are real `python -m mambaverse.cli fit` subprocesses on real FASTA (bowtie2's lambda
phage, ragout's S. aureus COL), signalled from this process; tests/_kill_helpers.py holds a run at a chosen step
so that the signal lands there."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mambaverse.genomics import FastaDataModule

LAMBDA = Path("/usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz")
COL = Path("/usr/share/doc/ragout/examples/S.Aureus/references/COL.fasta.gz")
if not (LAMBDA.exists() and COL.exists()):
    pytest.skip("needs bowtie2-examples and ragout-examples (make data)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
FILES = {"lambda": [str(LAMBDA)], "col": [str(COL)]}


def _config(tmp: Path, out: Path, stop_step: int = 0, mark: Path | None = None) -> Path:
    """Seed 1234, 3 epochs x 10 steps, a checkpoint every 5 steps (+ last.ckpt); dropout so that the random
    state matters, RC augmentation so that the window stream does."""
    cfg = {
        "seed_everything": 1234,
        "model": {"class_path": "mambaverse.genomics.DNAClassifier", "init_args": {
            "num_classes": 2, "backbone": "caduceus_ps_dna_small",
            "backbone_overrides": {"d_model": 16, "n_layer": 1, "d_state": 4, "expand": 1},
            "dropout": 0.1, "lr": 5e-3, "warmup_steps": 3, "output_dir": str(out)}},
        "data": {"class_path": "mambaverse.genomics.FastaDataModule", "init_args": {
            "files": FILES, "window": 64, "batch_size": 4, "train_samples": 40, "val_windows": 4,
            "test_windows": 4, "rc_prob": 0.5, "seed": 1234, "cache_dir": str(tmp / "cache")}},
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 3, "logger": False, "num_sanity_val_steps": 0,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(out),
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(out / "checkpoints"), "every_n_train_steps": 5, "save_top_k": -1,
                               "save_last": True, "filename": "{step}"}},
                {"class_path": "_kill_helpers.StopAfterStep",
                 "init_args": {"step": stop_step, "mark": str(mark) if mark else None}}]},
    }
    path = out.with_suffix(f".{stop_step}.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fit(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "mambaverse.cli", "fit", "--config", str(config), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _signal_at(proc: subprocess.Popen, mark: Path, sig: int) -> tuple[int, str]:
    deadline = time.monotonic() + 300
    while not mark.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.communicate()[0]
            pytest.fail(f"the run never reached its stop step (status {proc.returncode}):\n{out[-3000:]}")
        time.sleep(0.05)
    proc.send_signal(sig)
    out = proc.communicate(timeout=300)[0]
    return proc.returncode, out


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_killed_runs_resume_to_the_uninterrupted_weights(tmp_path):
    full = _fit(_config(tmp_path, tmp_path / "full"))  # the reference, alongside the interrupted one
    run = tmp_path / "run"
    ckdir = run / "checkpoints"

    # SIGTERM after step 12 (mid epoch 1): a resumable last.ckpt at step 12, non-zero exit
    rc, out = _signal_at(_fit(_config(tmp_path, run, 12, tmp_path / "m12")), tmp_path / "m12", signal.SIGTERM)
    assert rc == 143, out[-3000:]
    assert "stopped by SIGTERM" in out and str(ckdir / "last.ckpt") in out
    assert _ckpt(ckdir / "last.ckpt")["global_step"] == 12
    assert sorted(p.name for p in ckdir.iterdir()) == ["last.ckpt", "step=10.ckpt", "step=5.ckpt"]  # no temporaries
    assert oct((ckdir / "last.ckpt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    # resumed, then SIGKILLed after step 23 (mid epoch 2): last.ckpt is the step-20 checkpoint
    rc, out = _signal_at(_fit(_config(tmp_path, run, 23, tmp_path / "m23"), "--ckpt_path", str(ckdir / "last.ckpt")),
                         tmp_path / "m23", signal.SIGKILL)
    assert rc == -signal.SIGKILL, out[-3000:]
    assert _ckpt(ckdir / "last.ckpt")["global_step"] == 20

    # resumed again, to the end; steps 21-23 are replayed
    last = _fit(_config(tmp_path, run), "--ckpt_path", str(ckdir / "last.ckpt"))
    out = last.communicate(timeout=600)[0]
    assert last.returncode == 0, out[-3000:]
    out = full.communicate(timeout=600)[0]
    assert full.returncode == 0, out[-3000:]

    a, b = _ckpt(tmp_path / "full" / "checkpoints" / "step=30.ckpt"), _ckpt(ckdir / "step=30.ckpt")
    assert a["global_step"] == b["global_step"] == 30
    assert not list(ckdir.glob("last-v*.ckpt")), "a resumed run wrote last-vN.ckpt beside a stale last.ckpt"
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"weights differ after resume: {differ}"
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------ the window stream
def _dm(tmp_path, **kw):
    dm = FastaDataModule(FILES, window=64, batch_size=4, train_samples=24, cache_dir=str(tmp_path / "cache"),
                         seed=7, **kw)
    dm.setup("fit")
    return dm


def _epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(tuple(b["record"]), b["start"].tolist(), b["strand"]) for b in loader]


def test_windows_are_a_function_of_seed_epoch_and_index(tmp_path):
    dm = _dm(tmp_path)
    loader = dm.train_dataloader()
    e0, e1 = _epoch(loader, 0), _epoch(loader, 1)
    assert len(e0) == len(e1) == 6 and e0 != e1  # every epoch draws new windows
    assert _epoch(loader, 1) == e1  # ... and the same ones again for the same epoch
    other = _dm(tmp_path, num_workers=2).train_dataloader()  # another process layout, same stream
    assert _epoch(other, 1) == e1
    assert _epoch(_dm(tmp_path).train_dataloader(), 0) == e0
    # a datamodule restored mid-epoch 1 (after 3 of 6 batches) yields the remaining batches of that epoch
    resumed = _dm(tmp_path)
    resumed.load_state_dict({"seed": 7, "epoch": 1, "consumed": 12, "train_window": None})
    loader = resumed.train_dataloader()
    assert len(loader) == 6  # the epoch's length (and so the LR schedule) is unchanged
    assert _epoch(loader, 1) == e1[3:]
    assert _epoch(loader, 2) == _epoch(dm.train_dataloader(), 2)  # the next epoch is whole again
    # the seed of the checkpoint wins over the config's: the stream continues
    reseeded = FastaDataModule(FILES, window=64, batch_size=4, train_samples=24, cache_dir=str(tmp_path / "cache"),
                               seed=99)
    reseeded.setup("fit")
    reseeded.load_state_dict({"seed": 7})
    assert _epoch(reseeded.train_dataloader(), 1) == e1


def test_warmup_length_is_restored_with_the_datamodule(tmp_path):
    dm = _dm(tmp_path)
    dm.set_seq_len(32)
    state = dm.state_dict()
    again = _dm(tmp_path)
    again.load_state_dict(state)
    batch = next(iter(again.train_dataloader()))
    assert batch["input_ids"].shape == (4, 32)


# ------------------------------------------------------------------------------------------ audio and vision
def _trainer(out: Path, max_steps: int, every: int, stop_step: int, mark: Path | None, **extra) -> dict:
    return {"accelerator": "cpu", "devices": 1, "max_steps": max_steps, "logger": False, "num_sanity_val_steps": 0,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(out), **extra,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(out / "checkpoints"), "every_n_train_steps": every, "save_top_k": -1,
                               "save_last": True, "filename": "{step}"}},
                {"class_path": "_kill_helpers.StopAfterStep",
                 "init_args": {"step": stop_step, "mark": str(mark) if mark else None}}]}


def _kill_resume_compare(tmp_path: Path, config, term_at: int | None, kill_at: int, killed_last: int,
                         final: int) -> None:
    """config(out, stop_step, mark) -> a config path. An uninterrupted run beside one that is SIGTERMed after step
    ``term_at`` (None: not) and resumed, SIGKILLed after ``kill_at`` (its last.ckpt then holds step
    ``killed_last``) and resumed to the end: both end with the same weights and optimiser state at step ``final``."""
    full = _fit(config(tmp_path / "full", 0, None))
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    resume = ()
    if term_at is not None:
        rc, log = _signal_at(_fit(config(run, term_at, tmp_path / "m1")), tmp_path / "m1", signal.SIGTERM)
        assert rc == 143 and "stopped by SIGTERM" in log, log[-3000:]
        assert _ckpt(last)["global_step"] == term_at
        resume = ("--ckpt_path", str(last))
    rc, log = _signal_at(_fit(config(run, kill_at, tmp_path / "m2"), *resume), tmp_path / "m2", signal.SIGKILL)
    assert rc == -signal.SIGKILL, log[-3000:]
    assert _ckpt(last)["global_step"] == killed_last
    resumed = _fit(config(run, 0, None), "--ckpt_path", str(last))
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log[-3000:]
    log = full.communicate(timeout=600)[0]
    assert full.returncode == 0, log[-3000:]
    a, b = _ckpt(tmp_path / "full" / "checkpoints" / "last.ckpt"), _ckpt(last)
    assert a["global_step"] == b["global_step"] == final
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"weights differ after resume: {differ}"
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_audio_fit_killed_and_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    """The waveform LM (audio/) on real WAVs written here, random crops and shuffling on: SIGTERM mid epoch 0,
    SIGKILL mid epoch 1, resumed twice from last.ckpt: the same weights as the uninterrupted run."""
    sf = pytest.importorskip("soundfile")
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "wavs"
    for split, n in (("train", 26), ("valid", 4), ("test", 4)):  # 26 clips / batch 4: drop_last matters
        (root / split).mkdir(parents=True)
        for k in range(n):
            digit = k % 10
            t = np.arange(2000) / 8000
            x = 0.4 * np.sin(2 * np.pi * (200 + 60 * digit) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / split / f"{digit}_{k}.wav", x.astype(np.float32), 8000, subtype="PCM_16")

    def config(out, stop_step, mark):
        cfg = {
            "seed_everything": 1234,
            "model": {"class_path": "mambaverse.audio.tasks.WaveformLM",
                      "init_args": {"model": "sashimi_mamba_tiny", "conditional": True, "lr": 4e-3, "warmup_steps": 2,
                                    "sample_rate": 8000}},
            "data": {"class_path": "mambaverse.audio.data.WavDataModule",
                     "init_args": {"root": str(root), "sample_rate": 8000, "clip_seconds": 0.25, "train_crop": 256,
                                   "eval_crop": 256, "batch_size": 4, "seed": 5}},
            "trainer": _trainer(out, 12, 4, stop_step, mark, limit_val_batches=1, val_check_interval=6),
        }
        path = out.with_suffix(f".{stop_step}.yaml")
        path.write_text(yaml.safe_dump(cfg))
        return path

    _kill_resume_compare(tmp_path, config, term_at=3, kill_at=9, killed_last=8, final=12)


def test_vision_fit_killed_and_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    """A tiny Vim on real PNGs written here, through timm's training transforms (random resized crop, flip) and
    a shuffled order: SIGKILLed mid epoch 1 and resumed: the same weights as the uninterrupted run (SIGTERM is
    the same code path for every domain; the genomics and audio tests send it)."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for k in range(11):
            pixels = rng.integers(0, 120, (20, 20), dtype=np.uint8) + (100 if c else 0)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{k}.png")

    def config(out, stop_step, mark):
        cfg = {
            "seed_everything": 1234,
            "model": {"class_path": "mambaverse.vision.tasks.ImageClassifier", "init_args": {
                "num_classes": 2, "backbone": "vim_tiny", "in_chans": 1, "lr": 3e-3, "warmup_steps": 2,
                "backbone_overrides": {"img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 1, "d_state": 4},
                "output_dir": str(out)}},
            "data": {"class_path": "mambaverse.vision.data.ImageFolderDataModule", "init_args": {
                "root": str(root), "img_size": 16, "in_chans": 1, "batch_size": 4, "val_fraction": 0.2,
                "seed": 3}},
            "trainer": _trainer(out, 10, 3, stop_step, mark, limit_val_batches=1),
        }
        path = out.with_suffix(f".{stop_step}.yaml")
        path.write_text(yaml.safe_dump(cfg))
        return path

    # 17 training images / batch 4: 5 steps an epoch
    _kill_resume_compare(tmp_path, config, term_at=None, kill_at=8, killed_last=6, final=10)


def test_shared_sampler_is_a_function_of_seed_epoch_and_index():
    """mambaverse.training.sampling, the piece every domain's training loader uses: the order and each item's
    random draws depend on (seed, epoch, index) only, not on the global random state, and leave it untouched."""
    from mambaverse.training.sampling import EpochSampler, EpochSeeded

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            import random

            import numpy as np
            return i, float(torch.rand(())), float(np.random.rand()), random.random()

    def epoch(e, seed=1, consumed=0, rank=0, world=1):
        s = EpochSampler(10, num_replicas=world, rank=rank, resume_fn=lambda _: consumed, shuffle=True, seed=seed)
        s.set_epoch(e)
        ds = EpochSeeded(Draws(), seed)
        return [ds[k] for k in s]

    torch.manual_seed(0)
    before = torch.get_rng_state()
    e0 = epoch(0)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    assert sorted(x[0] for x in e0) == list(range(10)) and [x[0] for x in e0] != list(range(10))
    torch.manual_seed(99)
    assert epoch(0) == e0  # whatever the global state
    assert epoch(1) != e0 and sorted(epoch(1)) != sorted(e0)  # another order, other draws per item
    assert epoch(0, seed=2) != e0
    assert epoch(0, consumed=4) == e0[4:]  # a resumed epoch continues where the checkpoint was taken
    ranks = [epoch(0, rank=r, world=2) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(e0)


# ------------------------------------------------------------------------------------------ the demo
def test_demo_reports_an_early_stop_and_never_prints_an_older_checkpoint(tmp_path, capsys):
    """genomics/demo.py end to end on a tiny config: a full run, then a re-run into the same folder that is cut
    short at step 5 (the way max_time stops a run): the summary says so, and the checkpoint it prints and tests
    is the re-run's, not the first run's better one."""
    from mambaverse.genomics.demo import main as demo

    def config(stop):
        cfg = yaml.safe_load(_config(tmp_path, tmp_path / "unused").read_text())
        cfg["trainer"]["max_epochs"], cfg["trainer"]["max_steps"] = 2, 20
        cfg["trainer"]["callbacks"] = [{"class_path": "_kill_helpers.StopTraining", "init_args": {"step": stop}}]
        cfg["data"]["init_args"]["val_windows"] = 8
        path = tmp_path / f"demo_{stop}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    out = tmp_path / "demo"
    printed = {}
    for stop in (0, 5):
        assert demo(["--config", str(config(stop)), "--output", str(out)]) == 0
        text = capsys.readouterr().out
        line = next(x for x in text.splitlines() if x.startswith("demo: checkpoint"))
        printed[stop] = Path(line.split()[-1])
        assert printed[stop].exists()
        assert ("STOPPED EARLY" in text) == (stop == 5), text[-2000:]
        steps = _ckpt(printed[stop])["global_step"]
        assert steps in ((10, 20) if stop == 0 else (5,))  # the re-run's best: never the first run's model
        if stop == 5:
            assert "after 5 of 20 steps" in text and "best val_acc" in text
    assert _ckpt(out / "checkpoints" / "last.ckpt")["global_step"] == 5  # the final state, resumable
    assert json_window(out) == 64


def json_window(out: Path) -> int:
    import json

    return json.loads((out / "test_metrics.json").read_text())["window"]
