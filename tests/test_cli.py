"""The `mambaverse` command: real LightningCLI, real Trainer, real FASTA files from Debian packages."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mambaverse.cli import main

REFS = Path("/usr/share/doc/ragout/examples/S.Aureus/references")


def small_config(tmp_path: Path, **extra) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"class_path": "mambaverse.genomics.DNAClassifier",
                  "init_args": {"num_classes": 2, "backbone": "caduceus_ps_tiny",
                                "backbone_overrides": {"n_layer": 1, "d_model": 16}, "patch_size": 4,
                                "output_dir": str(tmp_path / "out")}},
        "data": {"class_path": "mambaverse.genomics.FastaDataModule",
                 "init_args": {"files": {"COL": [str(REFS / "COL.fasta.gz")], "N315": [str(REFS / "N315.fasta.gz")]},
                               "window": 128, "batch_size": 4, "train_samples": 12, "val_windows": 4,
                               "test_windows": 4, "cache_dir": str(tmp_path / "cache")}},
        "trainer": {"max_steps": 3, "log_every_n_steps": 1, "accelerator": "cpu", "devices": 1, "enable_checkpointing": False,
                    "default_root_dir": str(tmp_path), "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "logs")}}},
    }
    for dotted, value in extra.items():
        node = config
        *path, leaf = dotted.split(".")
        for key in path:
            node = node[key]
        node[leaf] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.skipif(not REFS.is_dir(), reason="needs Debian package ragout-examples (make test installs it)")
def test_cli_fit_runs_a_few_steps_and_logs_csv(tmp_path):
    assert main(["fit", "--config", str(small_config(tmp_path))]) == 0
    metrics = list((tmp_path / "logs").rglob("metrics.csv"))
    assert metrics, "Lightning's CSVLogger wrote no metrics"
    header = metrics[0].read_text().splitlines()[0]
    assert "train_loss" in header


@pytest.mark.skipif(not REFS.is_dir(), reason="needs Debian package ragout-examples (make test installs it)")
def test_cli_rejects_unknown_config_keys_with_the_key_named(tmp_path):
    config = small_config(tmp_path, **{"model.init_args.backbone_overides": {"n_layer": 1}})
    done = subprocess.run([sys.executable, "-m", "mambaverse.cli", "fit", "--config", str(config)],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "backbone_overides" in done.stderr


def test_cli_lists_presets(capsys):
    assert main(["models", "caduceus*"]) == 0
    out = capsys.readouterr().out
    assert "caduceus_ps_tiny" in out and "RCPSBackbone" in out and "vim_tiny" not in out
    assert main(["models", "no-such-model*"]) == 1


def test_cli_help_names_the_subcommands():
    """`mambaverse --help` lists `models` and every declared plugin command as commands, each with a line."""
    from mambaverse.cli import plugin_commands

    done = subprocess.run([sys.executable, "-m", "mambaverse.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    listed = done.stdout.split("Available subcommands:")[1]
    rows = {line.split()[0]: line for line in listed.splitlines() if line[:4] == "    " and line[4:5].strip()}
    plugins = set(plugin_commands())
    assert {"convert", "generate", "audio-data", "audio-metrics", "aal-slices"} <= plugins
    for name in ("fit", "validate", "test", "predict", "models", *plugins):
        assert name in rows and len(rows[name].split()) > 2, (name, listed)
    assert "cannot be loaded" not in listed


@pytest.mark.skipif(not REFS.is_dir(), reason="needs Debian package ragout-examples (make test installs it)")
def test_fit_resume_takes_a_new_lr_and_refuses_a_new_architecture(tmp_path, capsys):
    """`fit --ckpt_path` with optimiser settings changed (lr, weight_decay, max_steps) resumes with them: the saved
    hyperparameters, the optimiser's param groups and the schedule's base all hold the new values. A changed
    architecture argument is a one-line error naming the key and both values."""
    import torch

    ck = tmp_path / "ck"
    config = small_config(tmp_path, **{
        "trainer.max_steps": 2, "trainer.enable_checkpointing": True, "model.init_args.lr": 2e-3,
        "trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                               "init_args": {"dirpath": str(ck), "save_last": True}}]})
    assert main(["fit", "--config", str(config)]) == 0
    before = torch.load(ck / "last.ckpt", weights_only=True)
    assert before["global_step"] == 2
    old_group = before["optimizer_states"][0]["param_groups"][0]
    assert old_group["initial_lr"] == 2e-3
    capsys.readouterr()
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "3", "--model.init_args.lr", "5e-4",
                 "--model.init_args.weight_decay", "0.1", "--ckpt_path", str(ck / "last.ckpt")]) == 0
    assert "the config's lr=0.0005, weight_decay=0.1" in capsys.readouterr().err
    after = torch.load(ck / "last.ckpt", weights_only=True)
    assert after["global_step"] == 3 and after["hyper_parameters"]["lr"] == 5e-4
    group = after["optimizer_states"][0]["param_groups"][0]
    assert group["initial_lr"] == 5e-4 and group["weight_decay"] == 0.1
    assert after["lr_schedulers"][0]["base_lrs"] == [5e-4] * len(after["optimizer_states"][0]["param_groups"])
    # the schedule's position is kept (still warming up, one step further), its base is the new lr
    assert old_group["lr"] / 2e-3 < group["lr"] / 5e-4 < 1
    # an architecture argument
    assert main(["fit", "--config", str(config), "--model.init_args.patch_size", "8",
                 "--ckpt_path", str(ck / "last.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "patch_size: 4 in the checkpoint vs 8 in the config" in err
