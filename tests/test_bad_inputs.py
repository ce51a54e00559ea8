"""Every bad input is a one-line MambaverseError naming the file or key (or is handled correctly).

Table-driven: each case builds a real bad input under tmp_path (FASTA text and gzip files, WAVs written
with soundfile, PNGs written with PIL, checkpoints written with torch.save, YAML configs for the CLI),
calls the public entry point, and checks the exception type, that its message is one line, and that it
names the file or key. A second table checks inputs that used to be silently wrong and are now handled.
"""
from __future__ import annotations

import gzip
import math
import os
import warnings

import numpy as np
import pytest
import torch

from mambaverse.errors import ConfigError, MambaverseError, ShapeError

SMALL = {"d_model": 16, "n_layer": 1, "d_state": 4, "expand": 1}


def _w(path, data: str | bytes):
    """Write ``data`` to ``path`` (bytes or text); return the path."""
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def _fasta(tmp_path, text: str | bytes, name: str = "x.fa"):
    p = tmp_path / name
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


def _prepare(tmp_path, text, name="x.fa"):
    from mambaverse.genomics.fasta import prepare_fasta

    p = _fasta(tmp_path, text, name)
    return prepare_fasta(p, "lab", cache_dir=tmp_path / "cache")


def _dm(tmp_path, **kw):
    from mambaverse.genomics import FastaDataModule

    p = _fasta(tmp_path, ">r\n" + "ACGT" * 64 + "\n")
    kw = {"window": 32, "cache_dir": str(tmp_path / "cache"), **kw}
    return FastaDataModule({"a": [str(p)], "b": [str(p)]}, **kw)


def _clf(**kw):
    from mambaverse.genomics import DNAClassifier

    args = {"num_classes": 2, "backbone": "caduceus_ps_dna_small", "backbone_overrides": dict(SMALL)}
    args.update(kw)
    return DNAClassifier(**args)


def _lm(**kw):
    from mambaverse.genomics import DNALanguageModel

    args = {"backbone": "caduceus_ps_dna_small", "backbone_overrides": dict(SMALL)}
    args.update(kw)
    return DNALanguageModel(**args)


def _ckpt(tmp_path, model, name="m.ckpt", hparams=None):
    p = tmp_path / name
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(hparams or model.hparams)}, p)
    return p


def _wav(tmp_path, data, rate=16000, name="a.wav", subtype=None):
    import soundfile as sf

    p = tmp_path / name
    sf.write(p, data, rate, subtype=subtype)
    return p


def _png(tmp_path, array, name="i.png", mode=None):
    from PIL import Image

    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(p) if mode else Image.fromarray(array).save(p)
    return p


# ---------------------------------------------------------------------------------------------- FASTA
def _pf(path, **kw):
    from mambaverse.genomics.fasta import prepare_fasta
    return prepare_fasta(path, **kw)


def fasta_missing(t):
    _pf(t / "nope.fa", cache_dir=t / "cache")


def fasta_truncated_gzip(t):
    data = gzip.compress(b">a\n" + b"ACGT" * 5000 + b"\n")
    _prepare(t, data[: len(data) // 2], "trunc.fa.gz")


def fasta_bad_gzip(t):
    _prepare(t, b"\x1f\x8b" + b"not really gzip at all", "bad.fa.gz")


def fasta_cache_is_file(t):
    from mambaverse.genomics.fasta import prepare_fasta
    blocker = t / "blocker"
    blocker.write_text("x")
    prepare_fasta(_fasta(t, ">a\nACGT\n"), cache_dir=blocker / "sub")


FASTA_CASES = [
    ("fasta_missing", fasta_missing, "nope.fa"),
    ("fasta_empty", lambda t: _prepare(t, "", "empty.fa"), "empty.fa"),
    ("fasta_folder", lambda t: _pf(t, cache_dir=t / "c"), "is a folder"),
    ("fasta_whitespace_only", lambda t: _prepare(t, "  \n\n \t\n", "ws.fa"), "ws.fa"),
    ("fasta_fastq", lambda t: _prepare(t, "@r1\nACGT\n+\nIIII\n", "reads.fq"), "FASTQ"),
    ("fasta_no_header", lambda t: _prepare(t, "ACGTACGT\n", "nohead.fa"), "nohead.fa"),
    ("fasta_binary", lambda t: _prepare(t, b">a\nAC\x00\x01GT\n", "bin.fa"), "bin.fa"),
    ("fasta_truncated_gzip", fasta_truncated_gzip, "trunc.fa.gz"),
    ("fasta_bad_gzip", fasta_bad_gzip, "bad.fa.gz"),
    ("fasta_empty_record", lambda t: _prepare(t, ">a\n>b\nACGT\n", "er.fa"), "record 'a' is empty"),
    ("fasta_ragged_lines", lambda t: _prepare(t, ">a\nACGTACGT\nAC\nACGTACGT\n", "rag.fa"), "rag.fa"),
    ("fasta_cache_dir_is_file", fasta_cache_is_file, "cache_dir"),
]

# ------------------------------------------------------------------------------- datamodule config
DATA_CASES = [
    ("data_rc_prob_high", lambda t: _dm(t, rc_prob=1.5), "rc_prob"),
    ("data_rc_prob_negative", lambda t: _dm(t, rc_prob=-0.1), "rc_prob"),
    ("data_batch_size_zero", lambda t: _dm(t, batch_size=0), "batch_size"),
    ("data_train_samples_zero", lambda t: _dm(t, train_samples=0), "train_samples"),
    ("data_val_windows_negative", lambda t: _dm(t, val_windows=-1), "val_windows"),
    ("data_test_windows_negative", lambda t: _dm(t, test_windows=-3), "test_windows"),
    ("data_num_workers_negative", lambda t: _dm(t, num_workers=-1), "num_workers"),
    ("data_window_zero", lambda t: _dm(t, window=0), "window"),
    ("data_split_fractions", lambda t: _dm(t, split_fractions=(0.5, 0.5, 0.5)), "split_fractions"),
    ("data_max_n_fraction", lambda t: _dm(t, max_n_fraction=2.0), "max_n_fraction"),
    ("data_cache_dir_under_file", lambda t: _dm(t, cache_dir=str(_w(t / "f", "x") / "c")),
     "cache_dir"),
    ("data_window_longer_than_records", lambda t: _dm(t, window=10_000).setup(), "window 10000"),
]

# ------------------------------------------------------------------------------------ model config
MODEL_CASES = [
    ("model_output_dir_under_file", lambda t: _clf(output_dir=str(_w(t / "f", "x") / "out")), "output_dir"),
    ("model_lr_zero", lambda t: _clf(lr=0.0), "lr"),
    ("model_lr_nan", lambda t: _clf(lr=float("nan")), "lr"),
    ("model_lr_negative_lm", lambda t: _lm(lr=-1e-3), "lr"),
    ("model_dropout_one", lambda t: _clf(dropout=1.0), "dropout"),
    ("model_dropout_negative", lambda t: _clf(dropout=-0.1), "dropout"),
    ("model_d_state_zero", lambda t: _clf(backbone_overrides={**SMALL, "d_state": 0}), "d_state"),
    ("model_d_state_string", lambda t: _clf(backbone_overrides={**SMALL, "d_state": "16"}), "d_state"),
    ("model_d_model_negative", lambda t: _clf(backbone_overrides={**SMALL, "d_model": -4}), "d_model"),
    ("model_n_layer_zero", lambda t: _lm(backbone_overrides={**SMALL, "n_layer": 0}), "n_layer"),
    ("model_unknown_override", lambda t: _clf(backbone_overrides={**SMALL, "d_stat": 4}), "d_stat"),
    ("model_unknown_preset", lambda t: _clf(backbone="no_such_preset"), "no_such_preset"),
    ("model_num_classes_one", lambda t: _clf(num_classes=1), "num_classes"),
    ("model_patch_size_zero", lambda t: _clf(patch_size=0), "patch_size"),
    ("model_mask_prob_zero", lambda t: _lm(mask_prob=0.0), "mask_prob"),
    ("model_causal_on_bidirectional", lambda t: _lm(objective="causal"), "objective"),
    ("model_cls_with_stem", lambda t: _clf(pooling="cls", patch_size=4), "pooling"),
    ("model_window_not_multiple_of_patch", lambda t: _clf(patch_size=16).check_length(250, "data.window"), "patch_size=16"),
    ("model_odd_window_with_cls", lambda t: _clf(pooling="cls").check_length(255, "data.window"), "odd"),
    ("model_forward_not_multiple_of_patch", lambda t: _clf(patch_size=4)(torch.full((1, 10), 4)), "patch_size=4"),
]


# ------------------------------------------------------------------------------------ checkpoints
def pretrained_other_d_state(t):
    src = _clf(backbone_overrides={**SMALL, "d_state": 8})
    _clf(pretrained_ckpt=str(_ckpt(t, src, "d8.ckpt")))


def pretrained_other_dt_rank(t):
    src = _clf(backbone_overrides={**SMALL, "dt_rank": 2})
    _clf(backbone_overrides={**SMALL, "dt_rank": 3}, pretrained_ckpt=str(_ckpt(t, src, "dt.ckpt")))


def pretrained_text_file(t):
    p = t / "notes.ckpt"
    p.write_text("these are not weights")
    _clf(pretrained_ckpt=str(p))


def pretrained_no_backbone(t):
    p = t / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}}, p)
    _clf(pretrained_ckpt=str(p))


def _check_ckpt(path):
    from mambaverse.cli import check_ckpt_path
    check_ckpt_path(path)


def ckpt_truncated(t):
    good = _ckpt(t, _clf(), "good.ckpt")
    data = good.read_bytes()
    (t / "cut.ckpt").write_bytes(data[: len(data) // 2])
    _check_ckpt(t / "cut.ckpt")


def ckpt_zip_not_torch(t):
    import zipfile
    with zipfile.ZipFile(t / "z.ckpt", "w") as zf:
        zf.writestr("readme.txt", "hello")
    _check_ckpt(t / "z.ckpt")


def ckpt_no_state_dict(t):
    torch.save({"weights": torch.zeros(2)}, t / "nosd.ckpt")
    _check_ckpt(t / "nosd.ckpt")


def ckpt_config_differs(t):
    from mambaverse.cli import check_config_matches
    m = _clf(pooling="mean")
    p = _ckpt(t, m, "run.ckpt", {**m.hparams, "_class_path": "mambaverse.genomics.DNAClassifier"})
    cfg = {"class_path": "mambaverse.genomics.DNAClassifier", "init_args": {**m.hparams, "pooling": "last"}}
    check_config_matches(cfg, p)


def ckpt_load_other_model(t):
    src = _clf(backbone_overrides={**SMALL, "d_state": 8})
    ckpt = torch.load(_ckpt(t, src, "o.ckpt"), weights_only=True)
    _clf().on_load_checkpoint(ckpt)


def from_pretrained_other_d_state(t):
    from mambaverse import create_model, from_pretrained, save_pretrained
    save_pretrained(create_model("caduceus_ps_dna_small", **{**SMALL, "d_state": 8}), t / "folder")
    from_pretrained(t / "folder", d_state=4)


CKPT_CASES = [
    ("from_pretrained_other_d_state", from_pretrained_other_d_state, "A_log (8, 8) in the file vs (8, 4)"),
    ("pretrained_missing", lambda t: _clf(pretrained_ckpt=str(t / "gone.ckpt")), "gone.ckpt"),
    ("pretrained_other_d_state", pretrained_other_d_state, "A_log"),
    ("pretrained_other_dt_rank", pretrained_other_dt_rank, "x_proj"),
    ("pretrained_text_file", pretrained_text_file, "notes.ckpt"),
    ("pretrained_no_backbone", pretrained_no_backbone, "other.ckpt"),
    ("ckpt_missing", lambda t: _check_ckpt(t / "none.ckpt"), "none.ckpt"),
    ("ckpt_empty", lambda t: _check_ckpt(_w(t / "e.ckpt", b"")), "e.ckpt"),
    ("ckpt_folder", lambda t: _check_ckpt(t), "is a folder"),
    ("ckpt_text", lambda t: _check_ckpt(_w(t / "t.ckpt", "hi")), "t.ckpt"),
    ("ckpt_truncated", ckpt_truncated, "cut.ckpt"),
    ("ckpt_zip_not_torch", ckpt_zip_not_torch, "z.ckpt"),
    ("ckpt_no_state_dict", ckpt_no_state_dict, "nosd.ckpt"),
    ("ckpt_config_differs", ckpt_config_differs, "pooling"),
    ("ckpt_load_other_model", ckpt_load_other_model, "d_state"),
]

# -------------------------------------------------------------------------------------- backbones
BACKBONE_CASES = [
    ("backbone_int_ids", lambda t: _clf().backbone(torch.zeros(2, 8, dtype=torch.long)), "token ids"),
    ("backbone_length_zero", lambda t: _clf().backbone(torch.zeros(2, 0, 16)), "length 0"),
    ("backbone_wrong_width", lambda t: _clf().backbone(torch.zeros(2, 8, 15)), "d_model=16"),
    ("backbone_causal_length_zero", lambda t: __import__("mambaverse").create_model(
        "mamba_dna_paper", **SMALL)(torch.zeros(1, 0, 16)), "length 0"),
]


# ------------------------------------------------------------------------------------------ audio
def _audio():
    return pytest.importorskip("mambaverse.audio.data")


def wav_truncated(t):
    p = _wav(t, np.sin(np.linspace(0, 200, 16000)) * 0.5, name="cut.wav")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    _audio().read_wav(p)


AUDIO_CASES = [
    ("wav_text_file", lambda t: _audio().read_wav(_w(t / "txt.wav", "RIFF? no")), "txt.wav"),
    ("wav_empty_file", lambda t: _audio().read_wav(_w(t / "e.wav", b"")), "e.wav"),
    ("wav_rate_too_high", lambda t: _audio().read_wav(_wav(t, np.zeros(960), 96000, "hi.wav")), "hi.wav"),
    ("wav_no_samples", lambda t: _audio().read_wav(_wav(t, np.zeros(0), 16000, "none.wav")), "none.wav"),
    ("wav_nan_samples", lambda t: _audio().read_wav(_wav(t, np.array([0.1, np.nan, 0.2] * 100), 16000, "nan.wav",
                                                         "FLOAT")), "nan.wav"),
    ("wav_truncated", wav_truncated, "cut.wav"),
    ("wav_folder_without_wavs", lambda t: _audio().list_wavs(t), str(os.sep)),
    ("wav_root_not_folder", lambda t: _audio().WavDataModule(str(t / "nothing")).setup(), "nothing"),
    ("wav_sample_rate_config", lambda t: _audio().WavDataModule(str(t), sample_rate=100), "sample_rate"),
]


# ----------------------------------------------------------------------------------------- vision
def _vision():
    return pytest.importorskip("mambaverse.vision.data")


def png_truncated(t):
    p = _png(t, (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3), "cut.png")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _vision().load_image(p)


def mask_wrong_size(t):
    v = _vision()
    m = v.load_mask(_png(t, np.zeros((8, 6), np.uint8), "m.png"))
    v.check_mask(m, t / "m.png", t / "i.png", (8, 8), 3, 255)


def mask_bad_labels(t):
    v = _vision()
    m = v.load_mask(_png(t, np.full((8, 8), 7, np.uint8), "lab.png"))
    v.check_mask(m, t / "lab.png", t / "i.png", (8, 8), 3, 255)


def seg_missing_mask(t):
    _png(t, np.zeros((8, 8, 3), np.uint8), "images/a.png")
    (t / "masks").mkdir()
    _vision().pair_images_and_masks(t)


def image_folder_empty_class(t):
    _png(t, np.zeros((8, 8, 3), np.uint8), "a/x.png")
    (t / "b").mkdir()
    _vision().ImageFolderDataModule(str(t))


VISION_CASES = [
    ("image_text_file", lambda t: _vision().load_image(_w(t / "x.png", "no image")), "x.png"),
    ("image_truncated", png_truncated, "cut.png"),
    ("mask_rgb", lambda t: _vision().load_mask(_png(t, np.zeros((8, 8, 3), np.uint8), "rgb.png")), "rgb.png"),
    ("mask_wrong_size", mask_wrong_size, "m.png"),
    ("mask_labels_outside", mask_bad_labels, "lab.png"),
    ("seg_missing_mask", seg_missing_mask, "a.png"),
    ("image_folder_missing", lambda t: _vision().ImageFolderDataModule(str(t / "gone")), "gone"),
    ("image_folder_empty_class", image_folder_empty_class, "b"),
    ("idx_bad_magic", lambda t: _vision().read_idx(_w(t / "x.idx", b"\x01\x02\x03\x04rest")), "x.idx"),
]

# ------------------------------------------------------------------------ found by re-checking issue 16
def generate_ckpt_pickle_payload(t):
    """`mambaverse generate --ckpt_path` on a pickle with a __reduce__ payload: refused, and the payload never runs."""
    pytest.importorskip("soundfile")
    from mambaverse.audio.generate import load_task

    marker = t / "payload_ran"
    torch.save({"state_dict": {}, "hyper_parameters": _Payload(str(marker))}, t / "evil.ckpt")
    try:
        load_task(str(t / "evil.ckpt"))
    finally:
        assert not marker.exists(), "the pickle payload ran"


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def window_shorter_than_patch(t):
    _clf(patch_size=16).check_length(8)


def fasta_cache_is_read_only_file(t):
    from mambaverse.genomics.fasta import prepare_fasta

    (t / "blocker").write_text("x")
    with gzip.open(t / "g.fa.gz", "wt") as fh:
        fh.write(">r\nACGT\n")
    prepare_fasta(t / "g.fa.gz", cache_dir=t / "blocker" / "cache")


RECHECK_CASES = [
    ("generate_ckpt_pickle_payload", generate_ckpt_pickle_payload, "evil.ckpt"),
    ("window_shorter_than_patch", window_shorter_than_patch, "use a window of 16"),
    ("fasta_gz_cache_under_a_file", fasta_cache_is_read_only_file, "cache_dir"),
]

ERROR_CASES = RECHECK_CASES + FASTA_CASES + DATA_CASES + MODEL_CASES + CKPT_CASES + BACKBONE_CASES + AUDIO_CASES + VISION_CASES

# lead's 17:00 trial: audio and backbones
def _synth():
    return pytest.importorskip("mambaverse.audio.synth")


def _waveform_lm(**kw):
    from mambaverse.audio.tasks import WaveformLM

    return WaveformLM(model="sashimi_mamba_tiny", **kw)


def generate_ckpt_cut(t, keep):
    """A real WaveformLM checkpoint written by torch.save, then cut to ``keep`` of its bytes (0: empty)."""
    _audio()
    from mambaverse.audio.generate import load_task

    task = _waveform_lm()
    p = t / "cut.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, p)
    p.write_bytes(p.read_bytes()[: int(p.stat().st_size * keep)])
    load_task(str(p))


def levels_differ_from_model(t):
    _audio()
    _waveform_lm().check_datamodule(_audio().WavDataModule(str(t), quantization_channels=1024))


def _mamba_causal():
    return __import__("mambaverse").create_model("mamba_dna_paper", **SMALL)


def _vision_model(name):
    pytest.importorskip("mambaverse.vision")
    import mambaverse as mv

    if name == "vmamba_tiny":
        return mv.create_model(name, dims=(16, 32), depths=(1, 1), num_classes=2)
    return mv.create_model(name, embed_dim=16, depth=1, img_size=32, num_classes=2)


TRIAL_CASES = [
    ("audio_levels_over_16_bit", lambda t: _audio().WavDataModule(str(t), quantization_channels=100000),
     "quantization_channels: got 100000"),
    ("audio_levels_bool", lambda t: _audio().WavDataModule(str(t), quantization_channels=True),
     "quantization_channels"),
    ("audio_levels_differ_from_model", levels_differ_from_model, "n_classes 256"),
    ("audio_train_crop_negative", lambda t: _audio().WavDataModule(str(t), train_crop=-5), "train_crop: got -5"),
    ("audio_train_crop_zero", lambda t: _audio().WavDataModule(str(t), train_crop=0), "train_crop: got 0"),
    ("audio_train_crop_past_clip", lambda t: _audio().WavDataModule(str(t), train_crop=99999),
     "clip length 16000"),
    ("audio_eval_crop_past_clip", lambda t: _audio().WavDataModule(str(t), clip_seconds=0.5, eval_crop=8001),
     "eval_crop: got 8001"),
    ("generate_ckpt_truncated", lambda t: generate_ckpt_cut(t, 0.5), "cut.ckpt"),
    ("generate_ckpt_empty", lambda t: generate_ckpt_cut(t, 0), "cut.ckpt"),
    ("audio_data_val_fraction_negative", lambda t: _synth().build(t / "o", 4, val_fraction=-0.5),
     "--val-fraction: got -0.5"),
    ("audio_data_val_fraction_over_one", lambda t: _synth().build(t / "o", 4, val_fraction=1.5),
     "--val-fraction: got 1.5"),
    ("audio_data_fractions_leave_no_train", lambda t: _synth().build(t / "o", 4, val_fraction=0.5,
                                                                   test_fraction=0.5), "expected a sum < 1"),
    ("audio_data_takes_zero", lambda t: _synth().build(t / "o", 4, takes=0), "--takes: got 0"),
    ("backbone_causal_float64", lambda t: _mamba_causal()(torch.zeros(1, 4, 16, dtype=torch.float64)),
     "expected torch.float32"),
    ("backbone_rc_float64", lambda t: _clf().backbone(torch.zeros(2, 8, 16, dtype=torch.float64)),
     "expected torch.float32"),
    ("backbone_bf16_model_float32_input", lambda t: _mamba_causal().to(torch.bfloat16)(torch.zeros(1, 4, 16)),
     "expected torch.bfloat16"),
    ("vmamba_uint8_image", lambda t: _vision_model("vmamba_tiny")(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
     "expected a normalised float image"),
    ("vmamba_float64_image", lambda t: _vision_model("vmamba_tiny")(torch.zeros(1, 3, 32, 32, dtype=torch.float64)),
     "expected torch.float32"),
    ("vim_uint8_image", lambda t: _vision_model("vim_tiny")(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
     "VimBackbone"),
]
ERROR_CASES += TRIAL_CASES


def test_trial_wide_mu_law_codes_and_autocast_inputs_are_handled(tmp_path):
    """1024 mu-law levels keep codes above 255 (they were stored as uint8); a float32 input under autocast and an
    in-range crop are accepted (the dtype check lets autocast through)."""
    a = _audio()
    t = np.linspace(0, 1, 1600, endpoint=False)
    (tmp_path / "7").mkdir()
    _wav(tmp_path, 0.9 * np.sin(2 * np.pi * 220 * t), 16000, "7/a.wav")
    codes, labels = a.load_clips([tmp_path / "7" / "a.wav"], 16000, 1600, quantization_channels=1024)
    assert codes.dtype == torch.int16 and int(codes.max()) > 255 and int(codes.max()) < 1024
    assert labels.tolist() == [7]
    assert a.WavDataModule(str(tmp_path), train_crop=16000).train_crop == 16000
    _waveform_lm(model_overrides={"n_classes": 1024}).check_datamodule(
        a.WavDataModule(str(tmp_path), quantization_channels=1024))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _mamba_causal()(torch.zeros(1, 4, 16)).shape == (1, 4, 16)
# end of lead's 17:00 trial: audio and backbones


def test_table_is_large():
    assert len(ERROR_CASES) >= 40
    assert len({c[0] for c in ERROR_CASES}) == len(ERROR_CASES)


@pytest.mark.parametrize("make,needle", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_input_is_one_line_error(tmp_path, make, needle):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MambaverseError) as info:
            make(tmp_path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert needle in msg, msg


# ------------------------------------------------------------------------------ handled correctly
def test_fasta_trailing_blanks_crlf_cr_and_plain_gz_read_exactly(tmp_path):
    body = "ACGTACGTNN\nACGTAC"
    variants = {
        "blanks.fa": (">a desc \t\nACGTACGTNN  \nACGTAC\t\n>b\nGG \n").encode(),
        "crlf.fa": b">a\r\nACGTACGTNN\r\nACGTAC\r\n>b\r\nGG\r\n",
        "cr.fa": b">a\rACGTACGTNN\rACGTAC\r>b\rGG\r",
        "plain_named.fa.gz": b">a\nACGTACGTNN\nACGTAC\n>b\nGG\n",
        "dirty.fa.gz": gzip.compress(b">a\r\nACGTACGTNN \r\nACGTAC\r\n>b\r\nGG\r\n"),
    }
    from mambaverse.genomics.fasta import prepare_fasta
    from mambaverse.genomics.tokenizer import UNK_ID, DNATokenizer

    for name, data in variants.items():
        p = tmp_path / name
        p.write_bytes(data)
        src = prepare_fasta(p, cache_dir=tmp_path / "cache")
        assert src.records == [("a", 16), ("b", 2)], name
        assert src.fetch("a", 0, 16) == body.replace("\n", ""), name
        assert UNK_ID not in DNATokenizer().encode(src.fetch("a", 0, 16))


def test_lm_loss_without_targets_is_zero_and_a_skipped_step():
    from mambaverse.genomics.tokenizer import N_ID

    torch.manual_seed(0)
    for model in (_lm(objective="masked"), _lm(backbone="mamba_dna_paper", objective="causal")):
        ids = torch.full((2, 32), N_ID)  # an all-N window: nothing to predict
        loss, n = model.lm_loss(ids)
        assert n == 0 and torch.isfinite(loss) and loss.item() == 0.0
        loss.backward()
        assert all(p.grad is None or not p.grad.abs().any() for p in model.parameters())
        assert model.training_step({"input_ids": ids}, 0) is None
        ids[:, 5] = 4  # one base: a real target in the causal case, maybe none in the masked one
        loss, n = model.lm_loss(ids)
        assert torch.isfinite(loss)


def test_pretrained_allow_partial_loads_matching_and_names_the_rest(tmp_path):
    src = _clf(backbone_overrides={**SMALL, "d_state": 8})
    p = _ckpt(tmp_path, src, "d8.ckpt")
    with pytest.warns(UserWarning, match=r"A_log \(\d+, 8\) in the checkpoint vs \(\d+, 4\) here"):
        m = _clf(pretrained_ckpt=str(p), pretrained_allow_partial=True)
    assert any(k.endswith("norm_f.weight") for k in m.loaded_pretrained)
    assert not any("A_log" in k for k in m.loaded_pretrained)
    same = _clf(pretrained_ckpt=str(_ckpt(tmp_path, _clf(), "same.ckpt")))  # same model: everything, silently
    assert all(k in same.loaded_pretrained for k in same.state_dict() if k.startswith(("backbone.", "embed.")))


def test_odd_length_cls_and_patch_multiple_stay_rc_invariant():
    from mambaverse.genomics.tokenizer import rc_tokens

    torch.manual_seed(0)
    ids = torch.randint(4, 8, (2, 64))
    for model in (_clf(pooling="cls").eval(), _clf(patch_size=16, stem="conv").eval()):
        out, out_rc = model(ids), model(rc_tokens(ids))
        assert torch.allclose(out, out_rc, atol=1e-5)


def test_cli_errors_are_one_line_without_usage(tmp_path, capsys):
    from mambaverse.cli import main

    fa = _fasta(tmp_path, ">r\n" + "ACGT" * 64 + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model:\n  class_path: mambaverse.genomics.DNAClassifier\n  init_args:\n    num_classes: 2\n"
        f"    backbone_overrides: {SMALL}\n"
        "data:\n  class_path: mambaverse.genomics.FastaDataModule\n  init_args:\n"
        f"    files: {{a: [{fa}], b: [{fa}]}}\n    window: ${{data.init_args.win}}\n")
    cases = [
        (["fit", "--config", str(cfg)], "data.init_args.win"),  # a missing ${...} interpolation
    ]
    good = tmp_path / "g.yaml"
    good.write_text(cfg.read_text().replace("${data.init_args.win}", "32"))
    cases += [
        (["fit", "--config", str(good), "--data.init_args.rc_probb", "2"], "rc_probb"),
        (["fit", "--config", str(good), "--model.init_args.lr", "abc"], "lr"),
        (["test", "--config", str(good), "--ckpt_path", str(tmp_path / "none.ckpt")], "none.ckpt"),
    ]
    broken = tmp_path / "broken.yaml"  # a YAML syntax error names the file, not PyYAML's "<unicode string>"
    broken.write_text("trainer:\n  max_steps: [1\n")
    cases.append((["fit", "--config", str(broken)], "broken.yaml', line 2"))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    cases.append((["validate", "--config", str(good), "--ckpt_path", str(tmp_path / "empty.ckpt")], "empty.ckpt"))
    # a ${...} naming no key, given on the command line (jsonargparse, not omegaconf, reports this one)
    cases.append((["fit", "--config", str(good), "--model.init_args.output_dir", "${no.such.key}"], "no.such.key"))
    # an output folder under a file, and a checkpoint of another architecture
    (tmp_path / "afile").write_text("x")
    cases.append((["fit", "--config", str(good), "--trainer.default_root_dir", str(tmp_path / "afile" / "r")],
                  "trainer.default_root_dir"))
    m = _clf()
    ck = _ckpt(tmp_path, m, "arch.ckpt", {**m.hparams, "_class_path": "mambaverse.genomics.DNAClassifier"})
    cases.append((["test", "--config", str(good), "--model.init_args.pooling", "last", "--ckpt_path", str(ck)],
                  "pooling: 'mean' in the checkpoint vs 'last' in the config"))
    for argv, needle in cases:
        assert main(argv) == 2, argv
        # Lightning's own "seed set to 0" lines come first when the error is found after seeding
        err = "\n".join(ln for ln in capsys.readouterr().err.strip().splitlines() if "seed set to" not in ln.lower())
        assert "usage:" not in err and needle in err, err
        assert len(err.splitlines()) == 1, err


def test_help_lists_models(capsys):
    from mambaverse.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "models" in capsys.readouterr().out.split("\n")[0]


def test_lr_nan_message_names_range():
    with pytest.raises(ConfigError, match=r"model\.lr: got nan; expected a finite number > 0"):
        _clf(lr=math.nan)
    with pytest.raises(ShapeError):
        _clf()(torch.zeros(1, 0, dtype=torch.long))


@pytest.mark.parametrize("kwargs, key", [
    (dict(batch_size=0), "batch_size"), (dict(num_workers=-1), "num_workers"),
    (dict(val_fraction=1.5), "val_fraction"), (dict(quantization_channels=1), "quantization_channels"),
])
def test_audio_datamodule_rejects_bad_config_values(tmp_path, kwargs, key):
    from mambaverse.audio.data import WavDataModule

    with pytest.raises(MambaverseError, match=key):
        WavDataModule(str(tmp_path), **kwargs)


@pytest.mark.parametrize("kwargs, key", [
    (dict(batch_size=0), "batch_size"), (dict(img_size=0), "img_size"), (dict(num_workers=-1), "num_workers"),
])
def test_image_folder_datamodule_rejects_bad_config_values(tmp_path, kwargs, key):
    from mambaverse.vision.data import ImageFolderDataModule

    with pytest.raises(MambaverseError, match=key):
        ImageFolderDataModule(str(tmp_path), **kwargs)


# lead's 17:00 trial: FASTA and output paths
def _unwritable_cases(tmp_path):
    """(name, call, needle): each call writes under ``tmp_path/afile/sub``, a folder under a regular file (an
    unwritable path that behaves the same for root, unlike /proc)."""
    import mambaverse as mv
    from mambaverse.atomic import atomic_write_bytes, write_set
    from mambaverse.genomics.fasta import prepare_fasta
    from mambaverse.pretrained.cli import main as convert_main
    from mambaverse.vision.data import build_aal_slices

    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "sub"
    fa = _fasta(tmp_path, ">r\n" + "ACGT" * 8 + "\n")
    model = mv.create_model("caduceus_ps_dna", **SMALL)

    def convert():  # a CLI entry point: returns 2 and prints one line
        mv.save_pretrained(model, tmp_path / "ck")
        return convert_main([str(tmp_path / "ck"), str(bad / "conv")])

    def generate():
        gen = pytest.importorskip("mambaverse.audio.generate")
        return gen.main(["--config", str(tmp_path / "none.yaml"), "--ckpt_path", str(tmp_path / "none.ckpt"),
                         "--out", str(bad)])

    return [
        ("atomic_write", lambda: atomic_write_bytes(bad / "m.json", b"{}"), "afile"),
        ("write_set", lambda: write_set(bad / "set", {"a.txt": lambda p: p.write_text("a")}), "afile"),
        ("save_pretrained", lambda: mv.save_pretrained(model, bad), "afile"),
        ("fasta cache_dir", lambda: prepare_fasta(fa, "a", cache_dir=bad), "cache_dir"),
        ("aal-slices out_dir", lambda: build_aal_slices(bad / "aal"), "out_dir"),
        ("convert dst", convert, "afile"),
        ("generate --out", generate, "--out"),  # checked before the checkpoint is even read
    ]


@pytest.mark.parametrize("index", range(7))
def test_unwritable_output_folder_is_one_line(tmp_path, index, capsys):
    from mambaverse.errors import OutputPathError

    name, call, needle = _unwritable_cases(tmp_path)[index]
    try:
        rc = call()
    except MambaverseError as exc:
        msg = str(exc)
        assert needle in msg and "writable folder" in msg and "\n" not in msg, (name, msg)
        assert isinstance(exc, OutputPathError) or "cache_dir" in msg, (name, type(exc))
    else:
        assert rc == 2, f"{name}: no error for a folder under a regular file"
        err = capsys.readouterr().err.strip()
        assert needle in err and "writable folder" in err and len(err.splitlines()) == 1, (name, err)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "a temporary was left behind"


def test_cli_unwritable_folders_fail_up_front(tmp_path, capsys):
    from mambaverse.cli import main

    fa = _fasta(tmp_path, ">r\n" + "ACGT" * 64 + "\n")
    good = tmp_path / "g.yaml"
    good.write_text(
        "model:\n  class_path: mambaverse.genomics.DNAClassifier\n  init_args:\n    num_classes: 2\n"
        f"    backbone_overrides: {SMALL}\n"
        "data:\n  class_path: mambaverse.genomics.FastaDataModule\n  init_args:\n"
        f"    files: {{a: [{fa}], b: [{fa}]}}\n    window: 32\n    cache_dir: {tmp_path / 'cache'}\n"
        f"trainer:\n  max_steps: 1\n  default_root_dir: {tmp_path / 'runs'}\n  logger: false\n"
        "  enable_progress_bar: false\n  enable_model_summary: false\n")
    (tmp_path / "afile").write_text("x")
    bad = str(tmp_path / "afile" / "sub")
    m = _clf()
    ck = _ckpt(tmp_path, m, "m.ckpt", {**m.hparams, "_class_path": "mambaverse.genomics.DNAClassifier"})
    cases = [
        (["fit", "--data.init_args.cache_dir", bad], "data.cache_dir"),
        (["fit", "--trainer.default_root_dir", bad], "trainer.default_root_dir"),
        (["fit", "--model.init_args.output_dir", bad], "model.output_dir"),
        (["test", "--model.init_args.output_dir", bad, "--ckpt_path", str(ck)], "model.output_dir"),
    ]
    for extra, needle in cases:
        argv = [extra[0], "--config", str(good), *extra[1:]]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("mambaverse: error: ") and needle in err and "writable folder" in err, err
    assert not (tmp_path / "runs").exists(), "a run started before the bad folder was found"


@pytest.mark.parametrize("text", [
    ">r1 first record\nACGTACGTAC\nACGTACGTAC",            # no final newline (common, valid)
    ">r1 first record\nACGT ACGTA\tC\nAC GTACGTAC  \n",     # blanks inside sequence lines
    ">r1 first record\r\nACGTACGTAC\r\nACGT ACGTAC",       # both, with CRLF
])
def test_fasta_without_final_newline_or_with_inner_blanks_loads(tmp_path, text):
    src = _prepare(tmp_path, text)
    assert src.records == [("r1", 20)]
    assert src.fetch("r1", 0, 20) == "ACGTACGTACACGTACGTAC"
    again = _prepare(tmp_path, text)  # the cached copy and index are reused and still valid
    assert again.fetch("r1", 5, 15) == "CGTACACGTA"
