"""Trial round 3: audio, vision, pretrained folders and the CLI, tried as a new user would and with bad input.

Each test builds real input under tmp_path (WAVs with soundfile, IDX gzip files, checkpoints written with
torch.save, save_pretrained folders, YAML configs) and checks that a bad value is a one-line MambaverseError
naming the argument, key or file, never a crash deep in torch nor silently wrong output.
"""
from __future__ import annotations

import gzip
import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import mambaverse as mv
from mambaverse.errors import ConfigError, MambaverseError

audio = pytest.importorskip("mambaverse.audio")


def _one_line(err, *needles):
    text = str(err.value)
    assert isinstance(err.value, MambaverseError)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text


# ------------------------------------------------------------------------------------------ mu-law
@pytest.mark.parametrize("codes, needle", [
    (torch.tensor([300, 5]), "span [5, 300]"),                 # decoded to an amplitude of 7.1, not an error
    (torch.tensor([-5, 255]), "span [-5, 255]"),
    (torch.tensor([0.5, 128.0]), "dtype torch.float32"),       # float codes were decoded as if integers
])
def test_mu_law_decode_refuses_codes_outside_its_levels(codes, needle):
    with pytest.raises(audio.AudioDataError) as err:
        audio.mu_law_decode(codes)
    _one_line(err, "mu_law_decode", needle)


def test_mu_law_encode_refuses_nan_and_bad_levels():
    with pytest.raises(audio.AudioDataError) as err:  # NaN became code -2**63
        audio.mu_law_encode(torch.tensor([0.1, float("nan")]))
    _one_line(err, "mu_law_encode", "NaN")
    for levels in (1, 0, 2.5):
        with pytest.raises(audio.AudioDataError) as err:
            audio.mu_law_encode(torch.zeros(3), levels)
        _one_line(err, f"quantization_channels={levels!r}")
    with pytest.raises(audio.AudioDataError) as err:
        audio.mu_law_decode(torch.zeros(3, dtype=torch.long), 0)
    _one_line(err, "quantization_channels=0")
    # what stays valid: clipping, every code round trips, the extremes decode to +-1
    assert audio.mu_law_encode(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]
    codes = torch.arange(256)
    assert torch.equal(audio.mu_law_encode(audio.mu_law_decode(codes)), codes)
    assert audio.mu_law_decode(torch.tensor([0, 255], dtype=torch.uint8)).abs().max() <= 1.0


# ------------------------------------------------------------------------------------------ WAV folders
def _wav(path, data, rate=16000, subtype=None):
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, rate, subtype=subtype)
    return path


def _wav_folder(root):
    t = np.arange(4000) / 8000
    for i, rate in enumerate((8000, 22050, 44100)):  # mixed rates, one stereo 24-bit file
        x = 0.3 * np.sin(2 * np.pi * 300 * np.arange(int(rate * 0.5)) / rate)
        _wav(root / str(i) / f"c{i}.wav", np.stack([x, -x], 1) if i == 1 else x, rate, "PCM_24" if i == 1 else None)
    _wav(root / "3" / "c3.wav", 0.2 * np.sin(2 * np.pi * 440 * t), 8000)
    return root


@pytest.mark.parametrize("kwargs, needle", [
    ({"max_files": -1}, "data.max_files: got -1"),   # kept all but one file of every split, silently
    ({"max_files": 0}, "data.max_files: got 0"),     # meant "all files"
    ({"clip_seconds": float("nan")}, "data.clip_seconds: got nan"),   # a ValueError from round() in the CLI
    ({"clip_seconds": float("inf")}, "data.clip_seconds: got inf"),
])
def test_wav_datamodule_rejects_bad_counts_and_lengths(tmp_path, kwargs, needle):
    with pytest.raises(audio.AudioDataError) as err:
        audio.WavDataModule(str(_wav_folder(tmp_path / "w")), **kwargs)
    _one_line(err, needle)


def test_wav_folder_of_mixed_rates_and_channels_loads(tmp_path):
    dm = audio.WavDataModule(str(_wav_folder(tmp_path / "w")), clip_seconds=0.25, val_fraction=0.25,
                             test_fraction=0.25, batch_size=2, max_files=2)
    dm.setup()
    codes, labels = next(iter(dm.train_dataloader()))
    assert codes.shape == (2, 4000) and codes.dtype == torch.int64 and 0 <= int(codes.min()) <= int(codes.max()) < 256
    assert set(labels.tolist()) <= {0, 1, 2, 3}


# ------------------------------------------------------------------------------------------ generation (API)
@pytest.fixture(scope="module")
def cond_net():
    torch.manual_seed(0)
    return mv.create_model("sashimi_mamba_tiny", n_conditions=10).eval()


@pytest.mark.parametrize("kwargs, needle", [
    ({"temperature": float("nan")}, "temperature=nan"),   # every code came out 0 (full-scale negative)
    ({"temperature": -1.0}, "temperature=-1.0"),           # silently greedy
    ({"top_p": 0.0}, "top_p=0.0"),                          # silently greedy
    ({"top_p": float("nan")}, "top_p=nan"),                 # silently no nucleus
    ({"batch": 0, "labels": torch.zeros(0, dtype=torch.long)}, "batch=0"),
    ({"length": -1}, "length=-1"),
    ({"labels": torch.tensor([12, 1])}, "labels span [1, 12]"),   # IndexError deep in nn.Embedding
    ({"labels": torch.tensor([-1, 1])}, "labels span [-1, 1]"),
    ({"labels": torch.tensor([1, 1, 1])}, "labels have shape (3,)"),
    ({"labels": torch.tensor([1.7, 1.0])}, "dtype torch.float32"),  # was truncated to 1 silently
])
def test_generate_refuses_bad_arguments(cond_net, kwargs, needle):
    args = {"batch": 2, "length": 4, "labels": torch.tensor([1, 2]), **kwargs}
    with pytest.raises(MambaverseError) as err:
        cond_net.generate(**args)
    _one_line(err, "SaShiMiMamba.generate", needle)


def test_labels_for_an_unconditional_model_and_codes_out_of_range_are_refused():
    net = mv.create_model("sashimi_mamba_tiny").eval()
    with pytest.raises(MambaverseError) as err:  # the labels were ignored: an unconditional sample
        net.generate(2, 4, torch.tensor([1, 2]))
    _one_line(err, "unconditional")
    for bad, needle in ((300, "span [300, 300]"), (-1, "span [-1, -1]"), (256, "span [256, 256]")):
        with pytest.raises(MambaverseError) as err:  # IndexError in nn.Embedding (256 is the start symbol)
            net(torch.full((1, 16), bad))
        _one_line(err, needle, "[0, 256)")
    assert net.generate(2, 0).shape == (2, 0)
    assert net(torch.full((1, 16), 255)).shape == (1, 16, 256)


# ------------------------------------------------------------------------------------------ generation (CLI)
@pytest.fixture(scope="module")
def audio_ckpt(tmp_path_factory):
    from mambaverse.audio.tasks import WaveformLM

    t = tmp_path_factory.mktemp("gen")
    task = WaveformLM(model="sashimi_mamba_tiny", conditional=True)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, t / "m.ckpt")
    (t / "cfg.yaml").write_text("data:\n  init_args:\n    sample_rate: 16000\n    clip_seconds: 1.0\n")
    return t


@pytest.mark.parametrize("extra, needle", [
    (["--batch_size", "0"], "--batch_size 0"),          # ValueError: range() arg 3 must not be zero
    (["--batch_size", "-2"], "--batch_size -2"),        # torch.cat of an empty list
    (["--seconds", "nan"], "--seconds nan"),             # ValueError from round()
    (["--seconds", "inf"], "--seconds inf"),             # OverflowError
    (["--temperature", "nan"], "--temperature nan"),     # wrote clips of code 0, no error
    (["--device", "foo"], "--device foo"),               # RuntimeError from torch.device
    (["--device", "cuda:7"], "--device cuda:7"),         # no such device here (a CPU machine: no driver)
])
def test_generate_cli_bad_values_are_one_line(audio_ckpt, capsys, extra, needle):
    from mambaverse.audio.generate import main

    out = audio_ckpt / "out"
    rc = main(["--config", str(audio_ckpt / "cfg.yaml"), "--ckpt_path", str(audio_ckpt / "m.ckpt"), "-n", "2",
               "--seconds", "0.002", "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "\n" not in err, err
    assert not list(out.glob("*.wav"))


def test_generate_cli_writes_clips(audio_ckpt, capsys):
    import soundfile as sf
    from mambaverse.audio.generate import main

    out = audio_ckpt / "ok"
    assert main(["--config", str(audio_ckpt / "cfg.yaml"), "--ckpt_path", str(audio_ckpt / "m.ckpt"), "-n", "2",
                 "--seconds", "0.004", "--batch_size", "1", "--digit", "3", "--device", "cpu",
                 "--out", str(out)]) == 0
    data, rate = sf.read(out / "sample_001_digit3.wav")
    assert rate == 16000 and data.shape == (64,)


# ------------------------------------------------------------------------------------------ Fashion-MNIST
def _idx(path, array):
    magic = {1: 0x801, 3: 0x803}[array.ndim]
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def fmnist(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


@pytest.mark.parametrize("kwargs, needle", [
    ({"train_subset": -5}, "data.train_subset: got -5"),   # an empty training set: StopIteration
    ({"train_subset": 0}, "data.train_subset: got 0"),
    ({"test_subset": 0}, "data.test_subset: got 0"),
    ({"val_size": -1}, "data.val_size: got -1"),           # a scikit-learn ValueError
    ({"val_size": 40}, "data.val_size: got 40"),            # all 40 images held out: sklearn's error
])
def test_fashion_mnist_subsets_are_checked(fmnist, kwargs, needle):
    from mambaverse.vision.data import FashionMNISTDataModule, VisionDataError

    with pytest.raises(VisionDataError) as err:
        FashionMNISTDataModule(str(fmnist), batch_size=4, **{"val_size": 10, **kwargs}).setup("fit")
    _one_line(err, needle)
    dm = FashionMNISTDataModule(str(fmnist), batch_size=4, val_size=10, train_subset=20, test_subset=10)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (20, 10, 10)


# ------------------------------------------------------------------------------------------ pretrained folders
@pytest.fixture
def saved(tmp_path):
    mv.save_pretrained(mv.create_model("causal_tiny", d_model=16, n_layer=1), tmp_path / "a")
    return tmp_path / "a"


@pytest.mark.parametrize("key, value, needle", [
    ("d_model", "sixteen", "TypeError"),   # TypeError from torch.empty
    ("builder", 5, "builder=5"),           # AttributeError: 'int' object has no attribute 'split'
    ("builder", None, "builder=None"),
])
def test_config_json_values_of_the_wrong_type_are_one_line(saved, key, value, needle):
    cfg = json.loads((saved / "config.json").read_text())
    cfg[key] = value
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as err:
        mv.from_pretrained(saved)
    _one_line(err, str(saved / "config.json"), needle)


def test_pretrained_round_trip_is_exact(saved):
    model = mv.from_pretrained(saved)
    again = mv.from_pretrained(mv.save_pretrained(model, saved.parent / "b"))
    x = torch.randn(1, 8, 16)
    assert torch.equal(model(x), again(x))
    assert math.isfinite(float(again(x).detach().sum()))
    shutil.rmtree(saved.parent / "b")


# ------------------------------------------------------------------------------------------ vision backbones
@pytest.mark.parametrize("name, kwargs, needle", [
    ("vim_tiny", {"img_size": 30}, "img_size=(30, 30)"),          # built, then refused its own 30x30 input
    ("vim_tiny", {"img_size": 2}, "img_size=(2, 2)"),             # a position grid of 0 cells
    ("vim_tiny", {"patch_size": 0}, "patch_size: got 0"),         # ZeroDivisionError
    ("vim_tiny", {"in_chans": 0}, "in_chans: got 0"),             # built with an empty stem
    ("vim_tiny", {"num_classes": -1}, "num_classes: got -1"),     # no head, silently
    ("vmamba_tiny", {"patch_size": 0}, "patch_size: got 0"),
    ("vmamba_tiny", {"num_classes": -2}, "num_classes: got -2"),
])
def test_vision_backbone_sizes_are_checked_when_built(name, kwargs, needle):
    pytest.importorskip("mambaverse.vision")
    with pytest.raises(ConfigError) as err:
        mv.create_model(name, **kwargs)
    _one_line(err, needle)
    vim = mv.create_model("vim_tiny", embed_dim=16, depth=1, img_size=30, dynamic_img_pad=True, num_classes=0)
    assert vim(torch.rand(1, 3, 30, 30)).shape == (1, 16)  # padded inputs stay allowed


def test_classifier_with_fewer_classes_than_its_data_fails_at_setup(fmnist, tmp_path):
    """`fit` with model num_classes 5 on Fashion-MNIST's 10: 'Class values must be smaller than num_classes'
    from torchmetrics, with a traceback, after the sanity check; now one line before any step."""
    import lightning.pytorch as pl
    from mambaverse.vision.data import FashionMNISTDataModule
    from mambaverse.vision.tasks import ImageClassifier

    dm = FashionMNISTDataModule(str(fmnist), batch_size=4, val_size=10)
    model = ImageClassifier(num_classes=5, backbone="vim_tiny", in_chans=1,
                            backbone_overrides={"img_size": 28, "embed_dim": 8, "depth": 1, "d_state": 4})
    trainer = pl.Trainer(accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError) as err:
        trainer.fit(model, dm)
    _one_line(err, "num_classes: got 5", "has 10 classes")


@pytest.mark.parametrize("extra, needle", [
    (["--device", "foo"], "--device foo"),            # RuntimeError from torch.device
    (["--nll_clips", "0"], "--nll_clips 0"),          # ZeroDivisionError after the classifier and the scoring
    (["--epochs", "0"], "--epochs 0"),
    (["--samples", "missing_folder"], "--samples missing_folder"),   # found only after scoring the real clips
])
def test_audio_metrics_bad_values_fail_before_any_work(tmp_path, capsys, extra, needle):
    from mambaverse.audio.metrics import main

    data = _wav_folder(tmp_path / "w")
    rc = main(["--data", str(data), "--classifier", str(tmp_path / "clf"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "\n" not in err, err
    assert not (tmp_path / "clf").exists()  # nothing trained


def test_audio_data_pack_that_is_a_folder_fails_before_synthesis(tmp_path, capsys):
    """`audio-data --pack <a folder>` synthesised the whole set, then failed naming the folder's parent."""
    from mambaverse.audio.synth import main

    (tmp_path / "packs").mkdir()
    rc = main(["--out", str(tmp_path / "set"), "--voices", "10", "--pack", str(tmp_path / "packs")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and f"--pack {tmp_path / 'packs'}: is a folder" in err, err
    assert not list(tmp_path.rglob("*.wav"))
    (tmp_path / "blocker").write_text("x")
    assert main(["--out", str(tmp_path / "blocker" / "set"), "--voices", "10"]) == 2
    assert "--out" in capsys.readouterr().err


def test_small_wav_folder_keeps_a_validation_clip_and_refuses_an_empty_train_split(tmp_path):
    """4 files with val/test fractions 0.1: int(0.4) gave no validation nor test clip, only Lightning's warning."""
    dm = audio.WavDataModule(str(_wav_folder(tmp_path / "w")), clip_seconds=0.1)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 2, "val": 1, "test": 1}
    with pytest.raises(audio.AudioDataError) as err:
        audio.WavDataModule(str(tmp_path / "w"), clip_seconds=0.1, val_fraction=0.5, test_fraction=0.5).setup()
    _one_line(err, "4 WAV file(s) leave none to train on")


@pytest.mark.parametrize("name, kwargs", [("vim_tiny", {"embed_dim": 16, "depth": 1}),
                                          ("vmamba_tiny", {"dims": (8, 16), "depths": (1, 1)})])
def test_reset_classifier_is_saved_with_the_model(tmp_path, name, kwargs):
    """save_pretrained after reset_classifier(5) wrote the old num_classes: from_pretrained then refused it."""
    pytest.importorskip("mambaverse.vision")
    model = mv.create_model(name, **kwargs).eval()
    model.reset_classifier(5, "avg")
    loaded = mv.from_pretrained(mv.save_pretrained(model, tmp_path / "m")).eval()
    x = torch.rand(1, 3, 32, 32)
    assert loaded.global_pool == "avg" and torch.equal(model(x), loaded(x)) and loaded(x).shape == (1, 5)


@pytest.mark.parametrize("config, needle", [
    ({"model_type": "mamba", "architectures": ["MambaForCausalLM"], "hidden_size": "16", "num_hidden_layers": 1,
      "vocab_size": 10, "state_size": 4, "expand": 2, "conv_kernel": 4}, "transformers format"),   # TypeError
    ({"d_model": 16, "n_layer": 1, "vocab_size": 10, "ssm_cfg": "abc"}, "mamba_ssm format"),        # ValueError
    ({"model_type": "caduceus", "d_model": 16, "n_layer": None, "vocab_size": 12, "rcps": True,
      "bidirectional": True}, "caduceus format"),                                                  # TypeError
])
def test_foreign_config_values_of_the_wrong_type_are_one_line(tmp_path, config, needle):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError) as err:
        mv.from_pretrained(tmp_path)
    _one_line(err, str(tmp_path / "config.json"), needle)


def test_aal_slices_step_and_out_dir_are_checked(tmp_path, capsys):
    """`aal-slices OUT --step 0`: range()'s ValueError; `--step -2` or `--step 1000`: an empty set written without
    a word; OUT a file: NotADirectoryError after cutting every slice."""
    from mambaverse.vision.data import MRICRON_TEMPLATES, aal_slices_main

    (tmp_path / "file").write_text("x")
    for argv, needle in (([str(tmp_path / "a"), "--step", "0"], "step: got 0"),
                         ([str(tmp_path / "a"), "--step", "-2"], "step: got -2"),
                         ([str(tmp_path / "file")], "is a file")):
        assert aal_slices_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
    if not (Path(MRICRON_TEMPLATES) / "aal.nii.gz").is_file():
        pytest.skip("mricron-data is not installed")
    assert aal_slices_main([str(tmp_path / "a"), "--step", "1000"]) == 2
    assert "no slice in split(s) ['train', 'val', 'test']" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_sample_rate_of_data_and_model_must_agree(tmp_path, audio_ckpt, capsys):
    """Data at 8 kHz with the model's default 16 kHz trained silently, and `generate` then wrote 16 kHz WAVs
    (double speed); a generate config at another rate than the checkpoint's did the same."""
    from mambaverse.audio.generate import main
    from mambaverse.audio.tasks import WaveformLM

    with pytest.raises(ConfigError) as err:
        WaveformLM(model="sashimi_mamba_tiny").check_datamodule(
            audio.WavDataModule(str(_wav_folder(tmp_path / "w")), sample_rate=8000))
    _one_line(err, "data.sample_rate: got 8000", "16000")
    cfg = tmp_path / "8k.yaml"
    cfg.write_text("data:\n  init_args:\n    sample_rate: 8000\n")
    assert main(["--config", str(cfg), "--ckpt_path", str(audio_ckpt / "m.ckpt"), "-n", "1", "--seconds", "0.002",
                 "--out", str(tmp_path / "o")]) == 2
    assert "sample_rate 8000" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.wav"))
