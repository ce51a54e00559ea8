"""Genomics: tokenizer, FASTA cache, datamodule on real genomes, RC properties, bad inputs, Lightning runs."""
from __future__ import annotations

import gzip
import lzma
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pyfaidx")

from mambaverse.errors import MambaverseError  # noqa: E402
from mambaverse.genomics import (DNAClassifier, DNALanguageModel, DNATokenizer, EmbeddingWriter,  # noqa: E402
                                 FastaDataModule, GenomicsDataError, prepare_fasta)
from mambaverse.genomics.models import LMHead, RCPatchStem, RCTokenEmbedding, SequenceHead  # noqa: E402
from mambaverse.rc import rc_features  # noqa: E402

RAGOUT = Path("/usr/share/doc/ragout/examples")
SMALT = Path("/usr/share/doc/smalt/test/data")
LAMBDA = Path("/usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz")
COL = RAGOUT / "S.Aureus/references/COL.fasta.gz"
N315 = RAGOUT / "S.Aureus/references/N315.fasta.gz"
PFAL = SMALT / "genome_1.fa.gz"
HSX = SMALT / "hs37chrXtrunc.fa.gz"
for _p in (LAMBDA, COL, N315, PFAL):
    if not _p.exists():
        pytest.skip(f"real FASTA {_p} not installed (apt-get install ragout-examples smalt-examples bowtie2-examples)",
                    allow_module_level=True)

TINY = {"d_model": 16, "n_layer": 1, "d_state": 4}
tok = DNATokenizer()


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fasta_cache"))


def _dm(cache, files, **kw):
    kw.setdefault("window", 256)
    kw.setdefault("batch_size", 4)
    dm = FastaDataModule(files, cache_dir=cache, **kw)
    dm.setup("fit")
    return dm


def _read_plain(path: Path) -> dict[str, str]:
    opener = gzip.open if path.suffix == ".gz" else open
    recs, name = {}, None
    with opener(path, "rt") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith(">"):
                name = line[1:].split()[0]
                recs[name] = []
            elif line:
                recs[name].append(line)
    return {k: "".join(v) for k, v in recs.items()}


def _overlaps(a, b) -> bool:
    return a.source == b.source and a.record == b.record and a.start < b.end and b.start < a.end


# ------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_vocab_case_iupac_and_complement():
    ids = tok.encode("ACGTacgtNnRYkmU-*")
    assert tok.decode(ids[:8]) == "ACGTACGT"
    assert (ids[8:14] == tok.n_id).all() and ids[14] == tok.encode("T")[0]  # IUPAC -> N, U -> T
    assert (ids[15:] == tok.unk_id).all()
    comp = np.asarray(tok.complement_map)
    assert (comp[comp] == np.arange(tok.vocab_size)).all()  # an involution
    assert tok.decode(tok.rc_tokens(tok.encode("AACGTN"))) == "NACGTT"
    t = torch.tensor(tok.encode("GATTACA"))
    assert tok.decode(tok.rc_tokens(t)) == "TGTAATC"
    assert tok.vocab[tok.pad_id] == "[PAD]" and tok.vocab[tok.mask_id] == "[MASK]" and tok.vocab[tok.cls_id] == "[CLS]"


# ------------------------------------------------------------------------------------------ cache
def test_gz_and_xz_are_decompressed_once_and_read_correctly(cache, tmp_path):
    truth = _read_plain(LAMBDA)
    xz = tmp_path / "lambda.fa.xz"
    with gzip.open(LAMBDA, "rb") as fin, lzma.open(xz, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    for path in (LAMBDA, xz):
        src = prepare_fasta(path, "lambda", cache)
        mtime = os.stat(src.fasta_path).st_mtime_ns
        assert prepare_fasta(path, "lambda", cache).fasta_path == src.fasta_path
        assert os.stat(src.fasta_path).st_mtime_ns == mtime  # not decompressed again
        (name, n), = src.records
        assert n == len(truth[name]) == 48502
        assert src.fetch(name, 1000, 1100) == truth[name][1000:1100]
    assert not list(Path(cache).glob("*.tmp"))


# ------------------------------------------------------------------------------------------ sampling
def test_random_windows_match_the_genome_and_stay_in_train_regions(cache):
    dm = _dm(cache, {"lambda": [str(LAMBDA)], "col": [str(COL)]}, window=300, rc_prob=0.5, train_samples=64)
    truth = {**_read_plain(LAMBDA), **_read_plain(COL)}
    ds = dm.train_dataset()
    labels, strands = [], []
    for i in range(64):
        it = ds[i]
        seq = truth[it["record"]][it["start"]:it["end"]]
        ids = tok.encode(seq)
        if it["strand"] == "-":
            ids = tok.rc_tokens(ids)
        assert it["input_ids"].tolist() == ids.tolist()
        assert it["end"] - it["start"] == 300
        spans = [s for s in dm.spans["train"] if s.record == it["record"]]
        assert any(s.start <= it["start"] and it["end"] <= s.end for s in spans)
        labels.append(it["label"])
        strands.append(it["strand"])
    assert set(labels) == {0, 1} and set(strands) == {"+", "-"}
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 300) and batch["input_ids"].dtype == torch.long


def test_rc_augmentation_probability_extremes(cache):
    truth = _read_plain(LAMBDA)
    for p, strand in ((0.0, "+"), (1.0, "-")):
        dm = _dm(cache, {"lambda": [str(LAMBDA)], "col": [str(COL)]}, window=64, rc_prob=p)
        ds = dm.train_dataset()
        for i in range(16):
            it = ds[i]
            assert it["strand"] == strand
            if it["label"] == 0:
                fwd = tok.encode(truth[it["record"]][it["start"]:it["end"]])
                want = tok.rc_tokens(fwd) if strand == "-" else fwd
                assert it["input_ids"].tolist() == want.tolist()


def test_region_split_has_no_test_train_overlap_and_is_deterministic(cache):
    files = {"col": [str(COL)], "n315": [str(N315)]}
    dm = _dm(cache, files, window=2048, train_samples=300, test_windows=40, val_windows=20)
    test, val = dm.fixed_windows("test"), dm.fixed_windows("val")
    assert len(test) == 80 and len(val) == 40
    for w in test + val:  # eval windows lie wholly outside every training region
        assert not any(_overlaps(w, s) for s in dm.spans["train"])
    ds = dm.train_dataset()
    drawn = [ds[i] for i in range(300)]
    for it in drawn:
        for w in test:
            assert not (it["file"] == dm.sources[w.source].path and it["record"] == w.record
                        and it["start"] < w.end and w.start < it["end"])
    again = _dm(cache, files, window=2048, test_windows=40, val_windows=20)
    assert again.fixed_windows("test") == test
    b1 = next(iter(dm.test_dataloader()))["input_ids"]
    b2 = next(iter(again.test_dataloader()))["input_ids"]
    assert torch.equal(b1, b2)


def test_record_split_keeps_whole_records_apart(cache):
    # Each label needs >= 3 records for a record split: single-chromosome genomes must use split: region
    with pytest.raises(GenomicsDataError, match="col.*split: region"):
        _dm(cache, {"pfal": [str(PFAL)], "col": [str(COL)]}, window=512, split="record")
    dm = _dm(cache, {"pfal": [str(PFAL)], "pfal_again": [str(PFAL)]}, window=512, split="record",
             split_fractions=(0.6, 0.2, 0.2), test_windows=10)
    for li in (0, 1):
        recs = {sname: {s.record for s in dm.spans[sname] if s.label == li} for sname in ("train", "val", "test")}
        assert recs["train"] and recs["val"] and recs["test"]
        assert not (recs["train"] & recs["test"]) and not (recs["train"] & recs["val"]) and not (recs["val"] & recs["test"])
        assert len(recs["train"] | recs["val"] | recs["test"]) == 14
    ds = dm.train_dataset()
    test_recs = {(w.label, w.record) for w in dm.fixed_windows("test")}
    train_recs = {(s.label, s.record) for s in dm.spans["train"]}
    assert test_recs and not (test_recs & train_recs)
    items = [ds[i] for i in range(40)]
    assert all((it["label"], it["record"]) in train_recs for it in items)


# ------------------------------------------------------------------------------------------ N filter
@pytest.fixture(scope="session")
def n_rich_fasta(tmp_path_factory):
    """Real sequence from lambda with a long N block and soft-masked / IUPAC stretches."""
    truth = next(iter(_read_plain(LAMBDA).values()))
    seq = truth[:5000] + "N" * 20000 + truth[5000:6000].lower() + "RYKM" * 250 + truth[6000:9000]
    path = tmp_path_factory.mktemp("nfa") / "lambda_with_ns.fa"
    with open(path, "w") as fh:
        fh.write(">chunk description text\n")
        for i in range(0, len(seq), 60):
            fh.write(seq[i:i + 60] + "\n")
    return path, seq


def test_n_filter_softmask_and_iupac_on_a_written_file(cache, n_rich_fasta):
    path, seq = n_rich_fasta
    for thr in (0.0, 0.3):
        dm = _dm(cache, {"a": [str(path)], "b": [str(LAMBDA)]}, window=500, split_fractions=(1.0, 0.0, 0.0),
                 max_n_fraction=thr, rc_prob=0.0)
        ds = dm.train_dataset()
        for i in range(60):
            it = ds[i]
            assert tok.n_fraction(it["input_ids"].numpy()) <= thr
            if it["label"] == 0:
                assert it["input_ids"].tolist() == tok.encode(seq[it["start"]:it["end"]].upper()).tolist()
    ids = tok.encode(seq[25000:27000])  # soft-masked lowercase counts as its base; IUPAC counts as N
    assert (ids[:1000] != tok.n_id).all() and (ids[1000:2000] == tok.n_id).all()


def test_n_filter_on_human_chrx(cache):
    dm = _dm(cache, {"hsx": [str(HSX)], "lambda": [str(LAMBDA)]}, window=4096, max_n_fraction=0.05,
             test_windows=24, val_windows=4, train_samples=16)
    src = dm.sources[0]
    assert src.records[0][1] == 69999930
    assert tok.n_fraction(tok.encode(src.fetch("X", 0, 4096))) == 1.0  # the telomere is N
    windows = [w for w in dm.fixed_windows("test") if w.label == 0]
    assert len(windows) == 24
    loader_ids = [dm.train_dataset()[i]["input_ids"].numpy() for i in range(16)]
    for ids in [tok.encode(src.fetch(w.record, w.start, w.end)) for w in windows] + loader_ids:
        assert tok.n_fraction(ids) <= 0.05


# ------------------------------------------------------------------------------------------ RC properties
@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_rc_equivariant_classifier_is_rc_invariant(pooling):
    torch.manual_seed(0)
    m = DNAClassifier(num_classes=3, backbone="caduceus_ps_tiny", backbone_overrides=TINY, pooling=pooling).eval()
    assert m.rc
    x = torch.tensor(np.stack([tok.encode(s) for s in ("ACGTTGCAAGGCTTAN" * 4, "TTTTGGGGCCCAAANA" * 4)]))
    with torch.no_grad():
        a, b = m(x), m(tok.rc_tokens(x))
        assert a.abs().max() > 1e-3
        if pooling != "cls":  # with a conv k-mer stem in front, too
            ms = DNAClassifier(num_classes=3, backbone="caduceus_ps_tiny", backbone_overrides=TINY, pooling=pooling,
                               patch_size=4, stem="conv").eval()
            torch.testing.assert_close(ms(x), ms(tok.rc_tokens(x)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        # and the non-RC backbone is not, unless conjoined post hoc (Caduceus-Ph)
        ph = DNAClassifier(num_classes=3, backbone="bimamba_tiny", backbone_overrides=TINY, pooling=pooling).eval()
        assert not torch.allclose(ph(x), ph(tok.rc_tokens(x)), atol=1e-5)
        ph.hparams.conjoin = True
        torch.testing.assert_close(ph(x), ph(tok.rc_tokens(x)), atol=1e-5, rtol=1e-5)


def test_rc_embedding_stem_and_heads_properties():
    torch.manual_seed(1)
    x = torch.randint(4, 9, (3, 32))
    emb = RCTokenEmbedding(tok.vocab_size, 16, tok.complement_map)
    h = emb(x)
    torch.testing.assert_close(emb(tok.rc_tokens(x)), rc_features(h))
    for kind in ("patch", "conv"):
        stem = RCPatchStem(16, 4, rc=True, kind=kind)
        assert stem(h).shape == (3, 8, 16)
        torch.testing.assert_close(stem(rc_features(h)), rc_features(stem(h)))
    h = torch.randn(3, 32, 16)
    for pooling in ("mean", "last", "cls"):
        head = SequenceHead(16, 5, pooling, rc=True)
        torch.testing.assert_close(head(rc_features(h), cls_index=16), head(h, cls_index=15 + 1), atol=1e-6, rtol=1e-6)
    lm = LMHead(16, tok.vocab_size, rc=True, complement_map=tok.complement_map)
    out = lm(h)
    torch.testing.assert_close(lm(rc_features(h)), out[..., tok.complement_map].flip(1))
    lm_model = DNALanguageModel(backbone="caduceus_ps_tiny", backbone_overrides=TINY).eval()
    with torch.no_grad():
        y = lm_model(x)
        torch.testing.assert_close(lm_model(tok.rc_tokens(x)), y[..., tok.complement_map].flip(1), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ bad inputs
def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    assert isinstance(exc.value, MambaverseError)
    return msg


def test_bad_missing_file(cache, tmp_path):
    missing = tmp_path / "nope.fa.gz"
    with pytest.raises(GenomicsDataError) as e:
        _dm(cache, {"a": [str(missing)], "b": [str(LAMBDA)]})
    assert str(missing) in _one_line(e) and "not found" in str(e.value)


def test_bad_empty_file_and_empty_record(cache, tmp_path):
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    with pytest.raises(GenomicsDataError) as e:
        _dm(cache, {"a": [str(empty)], "b": [str(LAMBDA)]})
    assert str(empty) in _one_line(e) and "empty" in str(e.value)
    empty_gz = tmp_path / "empty.fa.gz"
    with gzip.open(empty_gz, "wb"):
        pass
    with pytest.raises(GenomicsDataError) as e:
        prepare_fasta(empty_gz, "a", cache)
    assert str(empty_gz) in _one_line(e) and "empty" in str(e.value)
    rec = tmp_path / "empty_record.fa"
    rec.write_text(">good\nACGTACGTAC\n>hollow some words\n>also_good\nGGGG\n")
    with pytest.raises(GenomicsDataError) as e:
        prepare_fasta(rec, "a", cache)
    msg = _one_line(e)
    assert str(rec) in msg and "'hollow'" in msg and "empty" in msg


def test_bad_non_fasta(cache, tmp_path):
    fq = SMALT / "cigar_read1.fq"
    with pytest.raises(GenomicsDataError) as e:
        prepare_fasta(fq, "a", cache)
    assert str(fq) in _one_line(e) and "not a FASTA" in str(e.value) and "FASTQ" in str(e.value)
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(GenomicsDataError) as e:
        prepare_fasta(binary, "a", cache)
    assert str(binary) in _one_line(e)
    folder = tmp_path / "dir.fa"
    folder.mkdir()
    with pytest.raises(GenomicsDataError) as e:
        prepare_fasta(folder, "a", cache)
    assert str(folder) in _one_line(e)


def test_bad_window_longer_than_every_record(cache):
    with pytest.raises(GenomicsDataError) as e:
        _dm(cache, {"lambda": [str(LAMBDA)], "col": [str(COL)]}, window=60_000)
    msg = _one_line(e)
    assert "60000" in msg and str(LAMBDA) in msg and "gi|9626243|ref|NC_001416.1|" in msg and "48502" in msg
    with pytest.raises(GenomicsDataError) as e:  # fits the genome but not its 10% validation region
        _dm(cache, {"lambda": [str(LAMBDA)], "col": [str(COL)]}, window=20_000)
    msg = _one_line(e)
    assert "every val region" in msg and "lambda" in msg and str(LAMBDA) in msg and "4850 bases" in msg


def test_bad_label_with_no_files_and_bad_config_values():
    with pytest.raises(GenomicsDataError) as e:
        FastaDataModule({"a": [str(LAMBDA)], "empty_label": []})
    assert "'empty_label'" in _one_line(e) and "no files" in str(e.value)
    with pytest.raises(GenomicsDataError):
        FastaDataModule({})
    with pytest.raises(GenomicsDataError) as e:
        FastaDataModule({"a": [str(LAMBDA)]}, split_fractions=(0.5, 0.5, 0.5))
    assert "split_fractions" in _one_line(e)


def test_bad_corrupt_index(tmp_path):
    cache = tmp_path / "cache"
    src = prepare_fasta(LAMBDA, "lambda", cache)
    Path(src.index_path).write_text("gi|9626243|ref|NC_001416.1|\t48502\tnot-a-number\t70\t71\n")
    with pytest.raises(GenomicsDataError) as e:
        prepare_fasta(LAMBDA, "lambda", cache)
    msg = _one_line(e)
    assert str(LAMBDA) in msg and "corrupt index" in msg and src.index_path in msg
    Path(src.index_path).write_text("gi|9626243|ref|NC_001416.1|\t9948502\t51\t70\t71\n")
    with pytest.raises(GenomicsDataError) as e:
        prepare_fasta(LAMBDA, "lambda", cache)
    assert "'gi|9626243|ref|NC_001416.1|'" in _one_line(e) and "past the end" in str(e.value)
    Path(src.index_path).unlink()  # deleting it rebuilds it
    assert prepare_fasta(LAMBDA, "lambda", cache).records[0][1] == 48502


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from mambaverse.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"""
model: {{class_path: mambaverse.genomics.DNAClassifier, init_args: {{num_classes: 2, backbone: caduceus_ps_tiny}}}}
data:
  class_path: mambaverse.genomics.FastaDataModule
  init_args: {{files: {{a: [{tmp_path}/missing.fa], b: [{LAMBDA}]}}, window: 64, cache_dir: {tmp_path}/c}}
trainer: {{accelerator: cpu, fast_dev_run: true, logger: false, enable_checkpointing: false,
          default_root_dir: {tmp_path}}}
""")
    assert main(["fit", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mambaverse: error: ") and "missing.fa" in err[-1] and "not found" in err[-1]
    # errors raised while the CLI instantiates the classes reach the user as one line too
    assert main(["fit", "--config", str(cfg), "--data.init_args.files", "{a: [], b: [" + str(LAMBDA) + "]}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mambaverse: error: ") and "'a' has no files" in err[-1]


# ------------------------------------------------------------------------------------------ Lightning
def _trainer(tmp_path, **kw):
    import lightning.pytorch as pl

    kw.setdefault("max_steps", 3)
    kw.setdefault("limit_val_batches", 1)
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path), **kw)


def test_classifier_fit_test_predict_and_finetune(cache, tmp_path):
    import lightning.pytorch as pl

    pl.seed_everything(0)
    dm = FastaDataModule({"lambda": [str(LAMBDA)], "col": [str(COL)], "n315": [str(N315)]}, window=128,
                         batch_size=8, train_samples=24, val_windows=4, test_windows=6, cache_dir=cache,
                         predict_windows=5)
    lm = DNALanguageModel(backbone="caduceus_ps_tiny", backbone_overrides=TINY)
    tr = _trainer(tmp_path / "lm")
    tr.fit(lm, datamodule=dm)
    assert np.isfinite(float(tr.callback_metrics["val_bpb"])) and float(tr.callback_metrics["val_bpb"]) > 0
    ckpt = tmp_path / "lm.ckpt"
    tr.save_checkpoint(ckpt)

    clf = DNAClassifier(num_classes=3, backbone="caduceus_ps_tiny", backbone_overrides=TINY, pooling="cls",
                        output_dir=str(tmp_path / "out"), pretrained_ckpt=str(ckpt))
    assert any(k.startswith("backbone.") for k in clf.loaded_pretrained)
    for (k, v) in lm.backbone.state_dict().items():
        torch.testing.assert_close(clf.backbone.state_dict()[k], v)
    writer = EmbeddingWriter(str(tmp_path / "emb"))
    tr = _trainer(tmp_path / "clf", callbacks=[writer])
    tr.fit(clf, datamodule=dm)
    assert tr.global_step == 3
    tr.test(clf, datamodule=dm, verbose=False)
    res = clf.test_results
    assert res["n"] == 18 and 0.0 <= res["accuracy"] <= 1.0 and np.array(res["confusion_matrix"]).sum() == 18
    assert (tmp_path / "out" / "confusion_matrix.png").stat().st_size > 1000
    assert (tmp_path / "out" / "test_metrics.json").exists()
    tr.predict(clf, datamodule=dm, return_predictions=False)
    emb = np.load(tmp_path / "emb" / "embeddings.npy")
    rows = (tmp_path / "emb" / "coords.tsv").read_text().strip().splitlines()
    assert emb.shape == (15, 8) and len(rows) == 16 and rows[0].split("\t")[:4] == ["index", "file", "record", "start"]
    first = rows[1].split("\t")
    assert first[6] == "lambda" and int(first[4]) - int(first[3]) == 128 and first[5] == "+"
    assert not list((tmp_path / "emb").glob("*.tmp"))
    # the fine-tuned checkpoint stands alone: it reloads after the pretrained LM checkpoint is gone
    clf_ckpt = tmp_path / "clf.ckpt"
    tr.save_checkpoint(clf_ckpt)
    ckpt.unlink()
    again = DNAClassifier.load_from_checkpoint(clf_ckpt)
    assert again.hparams.pretrained_ckpt is None and torch.equal(again.head.fc.weight, clf.head.fc.weight)
    warm = DNAClassifier(num_classes=3, backbone="caduceus_ps_tiny", backbone_overrides=TINY, pooling="cls",
                         pretrained_ckpt=str(clf_ckpt))
    assert "head.fc.weight" in warm.loaded_pretrained
    with pytest.raises(GenomicsDataError, match="lm.ckpt not found"):
        DNAClassifier(num_classes=3, backbone="caduceus_ps_tiny", backbone_overrides=TINY, pretrained_ckpt=str(ckpt))


def test_causal_lm_fast_dev_run(cache, tmp_path):
    dm = FastaDataModule({"lambda": [str(LAMBDA)], "col": [str(COL)]}, window=64, batch_size=4, train_samples=8,
                         val_windows=2, test_windows=2, cache_dir=cache)
    lm = DNALanguageModel(backbone="causal_tiny", backbone_overrides=TINY)
    assert lm.objective == "causal"
    tr = _trainer(tmp_path, fast_dev_run=True, max_steps=-1, limit_val_batches=None)
    tr.fit(lm, datamodule=dm)
    bpb = float(tr.callback_metrics["val_bpb"])
    assert 0.5 < bpb < 8  # untrained: near log2(vocab) bits per base
    with pytest.raises(MambaverseError, match="causal"):
        DNALanguageModel(backbone="bimamba_tiny", backbone_overrides=TINY, objective="causal")


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "genomics" / "configs").glob("*.yaml")))
def test_packaged_configs_parse(name, capsys):
    from mambaverse.cli import main

    cfg = Path(__file__).parents[1] / "genomics" / "configs" / name
    sub = "predict" if "embed" in name else "fit"
    with pytest.raises(SystemExit) as e:
        main([sub, "--config", str(cfg), "--print_config"])
    assert e.value.code in (0, None)
    assert "class_path: mambaverse.genomics" in capsys.readouterr().out


def test_set_seq_len_shortens_training_windows_only(cache):
    """The SequenceLengthWarmup hook: train windows follow set_seq_len, validation keeps `window`."""
    dm = _dm(cache, {"COL": [str(COL)], "lambda": [str(LAMBDA)]}, window=512, batch_size=2)
    dm.setup("fit")
    dm.set_seq_len(128)
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (2, 128)
    assert next(iter(dm.val_dataloader()))["input_ids"].shape[1] == 512
    dm.set_seq_len(512)
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (2, 512)
    with pytest.raises(GenomicsDataError, match="between 1 and window=512"):
        dm.set_seq_len(1024)
