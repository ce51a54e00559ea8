"""mambaverse.audio: real WAV files (written with soundfile) through the datamodule, bad files, mu-law, the U-Net's
causality and step/parallel parity for every stage layout, the synthetic digit set, metrics, and a tiny
end-to-end fit + generate through Lightning on CPU."""
from __future__ import annotations

import csv
import math
import shutil
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from mambaverse.audio import AudioDataError, SaShiMiMamba, WavDataModule, mu_law_decode, mu_law_encode, read_wav
from mambaverse.audio.data import label_of, parse_digit
from mambaverse.errors import MambaverseError


def _sine(rate, seconds=1.0, freq=440.0, amp=0.5, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    x = (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x, 0.5 * x], axis=1)


# ---- reading WAVs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate,subtype,channels", [(16000, "PCM_16", 1), (8000, "PCM_16", 1), (22050, "PCM_24", 1),
                                                   (44100, "FLOAT", 2), (48000, "PCM_24", 2), (11025, "PCM_U8", 1)])
def test_read_wav_any_rate_depth_and_channels(tmp_path, rate, subtype, channels):
    path = tmp_path / f"7_{rate}_{subtype}.wav"
    sf.write(path, _sine(rate, 0.8, channels=channels), rate, subtype=subtype)
    wav = read_wav(path, sample_rate=16000, length=16000)
    assert wav.shape == (16000,) and wav.dtype == torch.float32
    body = wav[800:12000]  # away from the resampler's edges and the zero padding after 0.8 s
    amp = 0.5 * (0.75 if channels == 2 else 1.0)  # stereo: mean of the sine and half of it
    assert abs(float(body.pow(2).mean().sqrt()) - amp / math.sqrt(2)) < 0.02 * amp
    assert float(wav[13000:].abs().max()) == 0.0  # padded with silence to 1 s
    spectrum = torch.fft.rfft(body).abs()
    assert abs(int(spectrum.argmax()) * 16000 / body.numel() - 440) < 3  # still a 440 Hz tone after resampling


def test_read_wav_crops_long_clips_and_keeps_24bit_precision(tmp_path):
    x = (np.random.default_rng(0).uniform(-0.9, 0.9, 20000)).astype(np.float64)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="PCM_24")
    wav = read_wav(tmp_path / "a.wav", 16000, 16000)
    assert wav.shape == (16000,)
    assert np.abs(wav.numpy() - x[:16000]).max() < 2 ** -22


def test_silence_gives_finite_codes_not_nan(tmp_path):
    sf.write(tmp_path / "0_silent.wav", np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    wav = read_wav(tmp_path / "0_silent.wav")
    codes = mu_law_encode(wav)
    assert torch.isfinite(wav).all() and codes.unique().tolist() == [128]
    from mambaverse.audio.metrics import DigitClassifier

    clf = DigitClassifier().eval()
    with torch.no_grad():
        assert torch.isfinite(clf(torch.zeros(2, 16000))).all()


@pytest.mark.parametrize("name,expected", [("7", 7), ("seven", 7), ("Seven", 7), ("0", 0), ("NINE", 9),
                                           ("17", None), ("dog", None)])
def test_parse_digit(name, expected):
    assert parse_digit(name) == expected


def test_labels_from_folder_or_file_name(tmp_path):
    for rel in ["3/a.wav", "four/b.wav", "5_c.wav", "Six_3f2b_nohash_0.wav", "x/seven-d.wav"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    assert [label_of(tmp_path / r) for r in ["3/a.wav", "four/b.wav", "5_c.wav", "Six_3f2b_nohash_0.wav",
                                            "x/seven-d.wav"]] == [3, 4, 5, 6, 7]


def test_datamodule_mixed_folder(tmp_path):
    rng = np.random.default_rng(0)
    specs = [(8000, "PCM_16", 1), (16000, "PCM_24", 2), (22050, "FLOAT", 1), (44100, "PCM_16", 2)]
    for split, n in (("train", 8), ("valid", 2), ("test", 2)):
        for i in range(n):
            rate, subtype, ch = specs[i % len(specs)]
            digit = i % 10
            where = tmp_path / split / (f"{digit}/clip{i}.wav" if i % 2 else f"{['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'][digit]}_clip{i}.wav")
            where.parent.mkdir(parents=True, exist_ok=True)
            x = (rng.standard_normal((int(rate * rng.uniform(0.5, 1.4)), ch)) * 0.1).astype(np.float32)
            sf.write(where, x.squeeze(), rate, subtype=subtype)
    dm = WavDataModule(str(tmp_path), sample_rate=16000, clip_seconds=0.5, train_crop=1000, batch_size=4)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 8, "val": 2, "test": 2}
    codes, labels = next(iter(dm.train_dataloader()))
    assert codes.shape == (4, 1000) and codes.dtype == torch.int64 and 0 <= codes.min() and codes.max() < 256
    assert sorted(dm.splits["train"].labels.tolist()) == list(range(8))
    val_codes, _ = next(iter(dm.val_dataloader()))
    assert val_codes.shape == (2, 8000)
    packed = WavDataModule(str(dm.save_packed(tmp_path / "packed.npz")), clip_seconds=0.5, train_crop=1000)
    packed.setup()  # the same codes and labels, read back without soundfile
    for split in ("train", "val", "test"):
        assert torch.equal(packed.splits[split].codes, dm.splits[split].codes)
        assert torch.equal(packed.splits[split].labels, dm.splits[split].labels)
    with pytest.raises(AudioDataError, match="packed at"):
        WavDataModule(str(tmp_path / "packed.npz"), clip_seconds=1.0).setup()


# ---- bad input --------------------------------------------------------------------------------------------------
def _good(path, rate=16000):
    sf.write(path, _sine(rate, 0.5), rate, subtype="PCM_16")
    return path


def _bad_files(tmp_path):
    good = _good(tmp_path / "1_good.wav")
    data = good.read_bytes()
    files = {}
    files["truncated"] = tmp_path / "2_truncated.wav"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["corrupt"] = tmp_path / "3_corrupt.wav"
    files["corrupt"].write_bytes(data[:30])  # header cut before the data chunk
    files["not audio"] = tmp_path / "4_text.wav"
    files["not audio"].write_text("this is a text file named .wav\n")
    files["sample format"] = tmp_path / "5_format.wav"
    bad = bytearray(data)
    bad[20:22] = struct.pack("<H", 0x1234)  # WAVE format tag no decoder knows
    files["sample format"].write_bytes(bytes(bad))
    files["empty"] = tmp_path / "6_empty.wav"
    files["empty"].write_bytes(b"")
    files["rate"] = tmp_path / "7_rate.wav"
    sf.write(files["rate"], _sine(96000, 0.1), 96000, subtype="PCM_16")
    files["nan"] = tmp_path / "8_nan.wav"
    x = _sine(16000, 0.1)
    x[5] = np.nan
    sf.write(files["nan"], x, 16000, subtype="FLOAT")
    return files


@pytest.mark.parametrize("kind,words", [("truncated", "truncated"), ("corrupt", "corrupt"),
                                        ("not audio", "not an audio file"), ("sample format", "sample format"),
                                        ("empty", "empty"), ("rate", "96000"), ("nan", "nan")])
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path, kind, words):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(AudioDataError) as info:
        read_wav(path)
    message = str(info.value)
    assert isinstance(info.value, MambaverseError) and "\n" not in message
    assert str(path) in message and words in message.lower()


def test_bad_file_inside_a_folder_names_it(tmp_path):
    _good(tmp_path / "1_a.wav")
    _good(tmp_path / "2_b.wav")
    (tmp_path / "3_c.wav").write_text("not audio")
    with pytest.raises(AudioDataError, match="3_c.wav"):
        WavDataModule(str(tmp_path), val_fraction=0, test_fraction=0).setup()


def test_empty_folder_and_non_digit_label(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioDataError, match="no .wav files"):
        WavDataModule(str(tmp_path / "empty")).setup()
    (tmp_path / "cats").mkdir()
    _good(tmp_path / "cats" / "meow_1.wav")
    with pytest.raises(AudioDataError, match=r"meow_1.*not a digit"):
        WavDataModule(str(tmp_path / "cats"), val_fraction=0, test_fraction=0).setup()
    dm = WavDataModule(str(tmp_path / "cats"), val_fraction=0, test_fraction=0, require_labels=False)
    dm.setup()
    assert dm.splits["train"].labels.tolist() == [-1]


# ---- mu-law -----------------------------------------------------------------------------------------------------
def test_mu_law_round_trip():
    codes = torch.arange(256)
    assert torch.equal(mu_law_encode(mu_law_decode(codes)), codes)  # every code survives decode -> encode
    x = torch.linspace(-1, 1, 10001)
    y = mu_law_decode(mu_law_encode(x))
    # mu-law steps grow with amplitude: the error is below half a step, relative to (|x| + 1/mu)
    assert float(((y - x).abs() / (x.abs() + 1 / 255)).max()) < 0.035
    assert int(mu_law_encode(torch.zeros(1))) == 128
    assert mu_law_encode(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]  # clipped, not wrapped


# ---- the U-Net ---------------------------------------------------------------------------------------------------
LAYOUTS = [dict(pool=()), dict(pool=(2,)), dict(pool=(4, 4)), dict(pool=(2, 3, 2)),
           dict(pool=(3, 2), n_conditions=10), dict(pool=(2, 4), mixer="mamba2", headdim=8, d_state=8)]


def _tiny(**kw):
    torch.manual_seed(0)
    return SaShiMiMamba(d_model=8, n_layers=1, **kw).eval()


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_step_equals_parallel_forward(layout):
    model = _tiny(**layout)
    b, length = 2, 3 * model.period + 5  # several coarse steps and a ragged end
    codes = torch.randint(0, 256, (b, length))
    labels = torch.tensor([2, 9]) if layout.get("n_conditions") else None
    with torch.no_grad():
        parallel = model(codes, labels)
    cache = model.allocate_cache(b)
    prev = torch.full((b,), model.start_code)
    stepped = []
    for t in range(length):
        stepped.append(model.step(prev, cache, labels))
        prev = codes[:, t]
    torch.testing.assert_close(torch.stack(stepped, 1), parallel, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_no_output_sees_its_own_or_a_future_sample(layout):
    model = _tiny(**layout)
    length = 4 * model.period + 3
    codes = torch.randint(0, 256, (1, length))
    labels = torch.tensor([4]) if layout.get("n_conditions") else None
    with torch.no_grad():
        base = model(codes, labels)
        for t in sorted({0, 1, model.period - 1, model.period, length // 2, length - 1}):
            changed = codes.clone()
            changed[:, t:] = (changed[:, t:] + 77) % 256
            out = model(changed, labels)
            assert torch.equal(out[:, :t + 1], base[:, :t + 1]), f"logits at <= {t} changed with samples >= {t}"
            if t + 1 < length:
                assert not torch.equal(out[:, t + 1:], base[:, t + 1:])


def test_generate_is_seeded_and_conditional_needs_labels():
    model = _tiny(pool=(2, 2), n_conditions=10)
    labels = torch.tensor([1, 7])
    a = model.generate(2, 21, labels, generator=torch.Generator().manual_seed(3), top_p=0.9)
    b = model.generate(2, 21, labels, generator=torch.Generator().manual_seed(3), top_p=0.9)
    assert a.shape == (2, 21) and torch.equal(a, b) and 0 <= a.min() and a.max() < 256
    greedy = model.generate(2, 9, labels, temperature=0)
    with torch.no_grad():  # greedy decoding picks the argmax of the parallel forward on its own output
        assert torch.equal(model(greedy, labels).argmax(-1), greedy)
    with pytest.raises(MambaverseError, match="labels"):
        model.generate(2, 4)


def test_presets_registered():
    import mambaverse

    assert {"sashimi_mamba_6m", "sashimi_mamba_tiny"} <= set(mambaverse.list_models("sashimi*"))
    big = mambaverse.create_model("sashimi_mamba_6m")
    assert 5.5e6 < sum(p.numel() for p in big.parameters()) < 7e6
    assert big.widths == [64, 128, 256] and big.period == 16


# ---- metrics ------------------------------------------------------------------------------------------------------
def test_mis_and_am_match_their_definitions():
    from mambaverse.audio.metrics import am_score, modified_inception_score

    p = torch.distributions.Dirichlet(torch.ones(10) * 0.3).sample((40,)).double()
    p_train = torch.distributions.Dirichlet(torch.ones(10)).sample((50,)).double()
    kl = lambda a, b: float((a * (a.log() - b.log())).sum())  # noqa: E731
    brute = math.exp(np.mean([kl(p[i], p[j]) for i in range(40) for j in range(40)]))
    assert modified_inception_score(p) == pytest.approx(brute, rel=1e-9)
    ent = float(-(p * p.log()).sum(-1).mean())
    assert am_score(p_train, p) == pytest.approx(kl(p_train.mean(0), p.mean(0)) + ent, rel=1e-9)
    one_hot = torch.eye(10).double().repeat(3, 1)  # confident and balanced like the training marginal: AM = 0
    assert am_score(one_hot, one_hot) == pytest.approx(0.0, abs=1e-6)


def test_score_fid_is_with_classifier_features():
    from mambaverse.audio.metrics import DigitClassifier, score

    torch.manual_seed(0)
    clf = DigitClassifier().eval()
    real = torch.randn(24, 16000) * 0.1
    out = score(clf, real, real[:12].clone(), labels=torch.arange(12) % 10)
    assert set(out) >= {"FID", "IS", "mIS", "AM", "digit_acc"} and all(math.isfinite(v) for v in out.values())
    assert out["IS"] >= 1.0 - 1e-6 and out["FID"] >= -1e-6
    far = score(clf, real, torch.randn(12, 16000) * 0.9)
    assert far["FID"] > out["FID"]  # louder noise is farther from the reference than part of the reference


# ---- the synthetic set and end to end --------------------------------------------------------------------------
needs_tts = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                               reason="espeak-ng and sox (Makefile DEB_DATA) are not installed")


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    from mambaverse.audio.synth import main

    out = tmp_path_factory.mktemp("sc09") / "set"
    assert main(["--out", str(out), "--voices", "10", "--workers", "2"]) == 0
    return out


@needs_tts
def test_audio_data_splits_by_voice_and_writes_1s_16k_pcm16(synth_set):
    with open(synth_set / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100 and {r["split"] for r in rows} == {"train", "valid", "test"}
    voices = {}
    for r in rows:
        voices.setdefault(r["voice"], set()).add(r["split"])
    assert all(len(s) == 1 for s in voices.values())  # no voice crosses splits
    for r in rows[:: 17]:
        info = sf.info(synth_set / r["path"])
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
        assert r["path"].split("/")[1] == r["word"]
        x, _ = sf.read(synth_set / r["path"])
        assert np.abs(x).max() > 0.05  # speech, not silence
    assert not list(synth_set.rglob("*.tmp"))


@needs_tts
def test_tiny_fit_then_generate_end_to_end(synth_set, tmp_path):
    import lightning.pytorch as pl
    from PIL import Image

    from mambaverse.audio.generate import main as generate
    from mambaverse.audio.tasks import WaveformLM

    dm = WavDataModule(str(synth_set), train_crop=512, eval_crop=512, batch_size=4)
    task = WaveformLM("sashimi_mamba_tiny", {"d_model": 16, "d_state": 4}, conditional=True, lr=3e-3, warmup_steps=1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, limit_val_batches=2, val_check_interval=6, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    dm.setup()
    val_codes, val_labels = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        before = task.net.nll(val_codes, val_labels).item()
    trainer.fit(task, dm)
    with torch.no_grad():
        after = task.net.nll(val_codes, val_labels).item()
    assert math.isfinite(trainer.callback_metrics["val_nll"].item())
    assert after < before - 0.1  # bits per sample on held-out voices fall after a few steps
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  init_args:\n    sample_rate: 16000\n    clip_seconds: 1.0\n")
    out = tmp_path / "samples"
    assert generate(["--config", str(config), "--ckpt_path", str(ckpt), "-n", "3", "--digit", "7", "--seconds",
                     "0.01", "--top_p", "0.95", "--out", str(out)]) == 0
    wavs = sorted(out.glob("*.wav"))
    assert [w.name for w in wavs] == [f"sample_{k:03d}_digit7.wav" for k in range(3)]
    info = sf.info(wavs[0])
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 160, "PCM_16")
    assert Image.open(out / "spectrograms.png").size[0] > 100
    assert generate(["--config", str(config), "--ckpt_path", str(tmp_path / "missing.ckpt")]) == 2
    assert generate(["--config", str(config), "--ckpt_path", str(ckpt), "--digit", "12", "--out", str(out)]) == 2
