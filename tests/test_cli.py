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
    done = subprocess.run([sys.executable, "-m", "mambaverse.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for word in ("fit", "validate", "test", "predict", "mambaverse models"):
        assert word in done.stdout
