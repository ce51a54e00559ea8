"""DNA benchmarks (issue 15): the named and block splits they rely on, the folding of windows into shorter
sequences, and both scripts end to end with --tiny on real FASTA (chrX pretraining, then the context sweep
fine-tuned from its checkpoint)."""
from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("pyfaidx")

from mambaverse.genomics import FastaDataModule, GenomicsDataError  # noqa: E402

LAMBDA = Path("/usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz")
NEEDED = [LAMBDA, Path("/usr/share/doc/smalt/test/data/hs37chrXtrunc.fa.gz"),
          Path("/usr/share/doc/smalt/test/data/genome_1.fa.gz"), Path("/usr/share/doc/smalt/test/data/cigar_ref.fa.gz"),
          Path("/usr/share/doc/ragout/examples/S.Aureus/references/COL.fasta.gz"),
          Path("/usr/share/doc/ragout/examples/E.Coli/references/MG1655-K12.fasta.gz"),
          Path("/usr/share/doc/kleborate/examples/data/Klebs_HS11286.fna.xz")]
for _p in NEEDED:
    if not _p.exists():
        pytest.skip(f"real FASTA {_p} not installed (apt-get install ragout-examples smalt-examples kleborate-examples "
                    f"bowtie2-examples)",
                    allow_module_level=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fasta_cache"))


def _lambda_seq() -> str:
    with gzip.open(LAMBDA, "rt") as fh:
        return "".join(line.strip() for line in fh if not line.startswith(">"))


def _overlaps(a, b) -> bool:
    return a.record == b.record and a.source == b.source and a.start < b.end and b.start < a.end


def test_blocks_split_scatters_disjoint_blocks_and_ignores_the_path(tmp_path, cache):
    copy = tmp_path / "elsewhere" / LAMBDA.name
    copy.parent.mkdir()
    shutil.copyfile(LAMBDA, copy)
    kw = dict(window=500, batch_size=2, split="blocks", block_size=1000, split_fractions=(0.8, 0.0, 0.2),
              val_windows=0, test_windows=8, cache_dir=cache)
    dm = FastaDataModule({"lambda": [str(LAMBDA)]}, **kw)
    dm.setup("fit")
    n = 48502
    train, test = dm.spans["train"], dm.spans["test"]
    # the spans tile the record exactly, and no held-out span touches a training span
    covered = sorted((s.start, s.end) for s in train + test)
    assert covered[0][0] == 0 and covered[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
    assert not any(_overlaps(a, b) for a in train for b in test)
    # 20% of the 49 blocks (rounded) held out, scattered rather than at one end
    held = sum(-(-(s.end - s.start) // 1000) for s in test)
    assert held == round(0.2 * 49)
    assert len(test) >= 3 and min(s.start for s in test) < n / 2 < max(s.end for s in test)
    # test windows lie inside held-out blocks
    for w in dm.fixed_windows("test"):
        assert any(s.start <= w.start and w.end <= s.end for s in test)
    # the same blocks from a copy elsewhere (seeded by record name, not path); other ones with another seed
    same = FastaDataModule({"lambda": [str(copy)]}, **kw)
    same.setup("fit")
    assert [(s.start, s.end) for s in same.spans["test"]] == [(s.start, s.end) for s in test]
    other = FastaDataModule({"lambda": [str(LAMBDA)]}, **{**kw, "seed": 1})
    other.setup("fit")
    assert [(s.start, s.end) for s in other.spans["test"]] != [(s.start, s.end) for s in test]


def test_blocks_split_needs_blocks_that_hold_a_window():
    with pytest.raises(GenomicsDataError, match="block_size"):
        FastaDataModule({"lambda": [str(LAMBDA)]}, window=512, split="blocks", block_size=256)
    with pytest.raises(GenomicsDataError, match="block_size"):
        FastaDataModule({"lambda": [str(LAMBDA)]}, window=512, split="blocks")


def test_named_split_holds_out_records_by_name(tmp_path, cache):
    seq = _lambda_seq()
    fa = tmp_path / "two_species.fa"
    names = ["MAL1", "MAL4", "MAL14", "Pk.4.1", "Pk.14.2", "Pk.BIN.3"]
    fa.write_text("".join(f">{name} piece {i}\n{seq[i * 8000:(i + 1) * 8000]}\n" for i, name in enumerate(names)))
    dm = FastaDataModule({"x": [str(fa)]}, window=1000, split="named", split_records={"test": r"MAL(4)|Pk\.(4)\.\d+"},
                         val_windows=0, test_windows=4, cache_dir=cache)
    dm.setup("fit")
    assert sorted(s.record for s in dm.spans["test"]) == ["MAL4", "Pk.4.1"]  # fullmatch: MAL14 stays in training
    assert sorted(s.record for s in dm.spans["train"]) == ["MAL1", "MAL14", "Pk.14.2", "Pk.BIN.3"]
    assert {w.record for w in dm.fixed_windows("test")} == {"MAL4", "Pk.4.1"}
    with pytest.raises(GenomicsDataError, match="split_records.test"):
        FastaDataModule({"x": [str(fa)]}, window=1000, split="named", split_records={"test": r"chr9"}, val_windows=0,
                        cache_dir=cache).setup("fit")
    with pytest.raises(GenomicsDataError, match="not a regular expression"):
        FastaDataModule({"x": [str(fa)]}, split="named", split_records={"test": "MAL("})
    with pytest.raises(GenomicsDataError, match="split_records"):
        FastaDataModule({"x": [str(fa)]}, split="named", split_records={"train": "MAL1"})


def test_fold_keeps_every_target_once(load_benchmark):
    pre = load_benchmark("dna_pretrain_context")
    ids = torch.arange(2 * 16 + 2).reshape(2, 17)
    pieces = pre.fold(ids, 4)
    assert pieces.shape == (8, 5)
    # inputs then targets: each window's 16 targets appear once, in order
    assert torch.equal(pieces[:4, 1:].reshape(-1), ids[0, 1:]) and torch.equal(pieces[4:, 1:].reshape(-1), ids[1, 1:])
    assert torch.equal(pieces[:4, :-1].reshape(-1), ids[0, :-1])
    with pytest.raises(ValueError):
        pre.fold(ids, 5)


def test_held_out_targets_are_the_same_at_every_length_and_half_mode_has_half_the_context(cache, load_benchmark):
    """Both evaluations score exactly the held-out bases [first, first + tiles * T) at every L; the
    context >= L/2 mode's sequences start L/2 bases earlier and score only their second half."""
    pre = load_benchmark("dna_pretrain_context")
    T = 2048
    dm = FastaDataModule({"lambda": [str(LAMBDA)]}, window=T + 1, batch_size=1, split="region",
                         split_fractions=(0.8, 0.2, 0.0), val_windows=0, test_windows=0, cache_dir=cache)
    dm.setup("fit")
    held = pre.HeldOut(dm, tiles=10, T=T)
    a, b = dm.spans["val"][0].start, dm.spans["val"][0].end
    assert held.first == a + T // 2 + 1 and held.first + held.bases <= b and held.tiles == (b - a - T // 2 - 1) // T
    full = torch.from_numpy(dm.tokenizer.encode(_lambda_seq()).astype("int64"))
    want = full[held.first:held.first + held.bases]
    for L in (64, 512, T):
        whole = held.sequences(L, half=False)
        assert whole.shape == (held.bases // L, L + 1) and torch.equal(whole[:, 1:].reshape(-1), want)
        halves = held.sequences(L, half=True)
        assert halves.shape == (2 * held.bases // L, L + 1)
        assert torch.equal(halves[:, 1 + L // 2:].reshape(-1), want)  # second halves tile the same targets
        start = held.first - 1 - L // 2  # the first sequence's first input base, in the held-out region
        assert start >= a and torch.equal(halves[0], full[start:start + L + 1])


def test_runs_are_shared_by_cost_and_the_plan_fits_every_worker(load_benchmark):
    pre = load_benchmark("dna_pretrain_context")
    runs = [(1024, 0), (2 ** 20, 0), (2 ** 20, 1), (1024, 1), (2 ** 16, 0), (2 ** 12, 0), (2 ** 18, 0), (2 ** 14, 0)]
    sps = {1024: 0.6, 2 ** 12: 0.62, 2 ** 14: 0.64, 2 ** 16: 0.66, 2 ** 18: 0.68, 2 ** 20: 0.7}
    shares = pre.assign_runs(runs, {r: sps[r[0]] * 100 + 10 for r in runs}, 2)
    assert sorted(r for s in shares for r in s) == sorted(runs) and [len(s) for s in shares] == [4, 4]
    for s in shares:  # each worker keeps the priority order
        assert s == [r for r in runs if r in s]
    steps = pre.plan_steps(400.0, 10.0, sps, shares)
    loads = [sum(steps * sps[L] + 10.0 for L, _ in s) for s in shares]
    assert max(loads) <= 400.0 and max(sum((steps + 1) * sps[L] + 10.0 for L, _ in s) for s in shares) > 400.0
    assert pre.assign_runs(runs[:3], {r: 1.0 for r in runs}, 4)[3] == []  # more workers than runs: one idle
    assert pre.sps_at({1024: 1.0, 2 ** 20: 2.0}, 2 ** 15) == pytest.approx(1.5)
    assert pre.parse_gpus("0,1") == ["0", "1"] and pre.parse_gpus("cpu,cpu") == ["cpu", "cpu"]
    with pytest.raises(SystemExit, match="--gpus"):
        pre.parse_gpus("0,x")


def test_worker_sees_only_its_gpu(monkeypatch, load_benchmark):
    """A --gpus index counts the GPUs this process sees: under CUDA_VISIBLE_DEVICES=4,5, worker 1 gets GPU 5."""
    pre = load_benchmark("dna_pretrain_context")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert [(e["CUDA_VISIBLE_DEVICES"], d) for e, d in map(pre.worker_env, ["0", "1"])] == [("4", "cuda"), ("5", "cuda")]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    env, dev = pre.worker_env("1")
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and dev == "cuda"
    assert pre.worker_env("cpu")[1] == "cpu"


def test_tiny_pretraining_then_sweep_end_to_end(tmp_path, cache, load_benchmark):
    """Both scripts with --tiny on real chrX, Plasmodium and S. aureus FASTA: pretraining through two worker
    processes (--gpus cpu,cpu: the multi-GPU path on CPU) merged into one results file, the same held-out
    bases at every length, a checkpoint (written by the worker that ran the longest length) that the sweep's
    pretrained runs load, and a time cap that leaves a results file whose rows say they were not run."""
    pre, sweep = load_benchmark("dna_pretrain_context"), load_benchmark("dna_context_sweep")
    out, ckpt = tmp_path / "results", tmp_path / "chrX.ckpt"
    assert pre.main(["--tiny", "--gpus", "cpu,cpu", "--out", str(out), "--save-ckpt", str(ckpt), "--cache-dir", cache,
                     "--work-dir", str(tmp_path / "runs")]) == 0
    res = json.loads((out / "dna_pretrain_context_cpu_tiny.json").read_text())
    rows = res["rows"]
    assert sorted((r["context"], r["seed"]) for r in rows) == [(64, 0), (256, 0), (1024, 0), (1024, 1)]
    assert {r["worker"] for r in rows} == {0, 1} and all(r["status"] == "done" for r in rows)
    assert len({r["val_bases"] for r in rows}) == 1 and len({r["train_tokens"] for r in rows}) == 1
    assert len({r["val_targets"] for r in rows}) == 1
    assert all(math.isfinite(r["val_bpb_half"]) and 1.0 < r["val_bpb_half"] < 4.0 for r in rows)
    assert all(math.isfinite(r["val_bpb"]) and 1.0 < r["val_bpb"] < 4.0 for r in rows)
    assert [r["sequences_per_step"] for r in sorted(rows, key=lambda r: r["context"])][:3] == [16, 4, 1]
    assert {m["order"] for m in res["markov"]} == {2, 4}
    md = (out / "dna_pretrain_context_cpu_tiny.md").read_text()
    assert "run-to-run noise" in md and "| 1,024 | 10 | 1 |" in md and "2 worker processes" in md
    assert (out / "dna_pretrain_context_cpu_tiny.png").stat().st_size > 1000

    # the float16 copy staged for a small device tree: half the bytes, the same weights to float16 rounding
    half = sweep.stage_ckpt(str(ckpt), tmp_path)
    full_sd = torch.load(ckpt, weights_only=True)["state_dict"]
    half_ck = torch.load(half, weights_only=True)
    assert half.stat().st_size < 0.75 * ckpt.stat().st_size and half_ck["hyper_parameters"]["backbone"]
    for k, v in full_sd.items():
        if v.is_floating_point():
            assert half_ck["state_dict"][k].dtype == torch.float16
            torch.testing.assert_close(half_ck["state_dict"][k].float(), v, rtol=1e-3, atol=1e-4)
    assert sweep.main(["--tiny", "--pretrained", str(half), "--out", str(out), "--cache-dir", cache,
                       "--work-dir", str(tmp_path / "sweep")]) == 0
    res = json.loads((out / "dna_context_sweep_cpu_tiny.json").read_text())
    rows = res["rows"]
    assert {(r["task"], r["init"], r["context"]) for r in rows} == {
        (t, i, L) for t in ("enterobacteria", "plasmodium") for i in ("pretrained", "scratch") for L in (64, 256)}
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["test_windows"] >= r["classes"] * 4
        assert (r["pretrained_tensors"] > 0) == (r["init"] == "pretrained")
    # the Markov-classifier anchor: every task, order and length, scored on the runs' own test windows
    anchor = {(m["task"], m["order"], m["context"]): m for m in res["markov"]}
    assert set(anchor) == {(t, k, L) for t in ("enterobacteria", "plasmodium") for k in (2, 4) for L in (64, 256)}
    tw = {(r["task"], r["context"]): r["test_windows"] for r in rows}
    assert all(m["test_windows"] == tw[(m["task"], m["context"])] for m in anchor.values())
    assert anchor[("plasmodium", 4, 256)]["accuracy"] > 0.5  # 19% vs 38% GC: composition alone tells them apart
    md = (out / "dna_context_sweep_cpu_tiny.md").read_text()
    assert "by chromosome" in md and "by region" in md and "Markov classifier" in md and "## Task choice" in md

    # a time budget too small for any run: every row says so, and the files are still written
    assert pre.main(["--tiny", "--time-budget", "1", "--out", str(tmp_path / "cut"), "--save-ckpt", "",
                     "--cache-dir", cache, "--tag", "cut"]) == 0
    cut = json.loads((tmp_path / "cut" / "dna_pretrain_context_cut.json").read_text())["rows"]
    assert len(cut) == 4 and all(r["val_bpb"] is None and r["status"].startswith("not run") for r in cut)
    assert all((tmp_path / "cut" / f"dna_pretrain_context_cut.{e}").exists() for e in ("md", "png"))


def test_stage_data_copies_only_what_a_script_reads_and_xz_copies_read_the_same(tmp_path, cache, monkeypatch,
                                                                                load_benchmark):
    """--stage-data: the named files only (stale copies of the others removed, other files kept); --stage-xz: a
    gzip file recompressed to .xz, found by data_path under its .gz name, and read back base for base."""
    common = load_benchmark("dna_common")
    other = tmp_path / "other.fa.gz"
    shutil.copyfile(LAMBDA, other)
    monkeypatch.setattr(common, "DATA", {"lambda_virus.fa.gz": LAMBDA, "other.fa.gz": other})
    dest = tmp_path / "staged"
    common.stage_data(str(dest), ["lambda_virus.fa.gz", "other.fa.gz"])
    (dest / "model.ckpt").write_bytes(b"x")
    common.stage_data(str(dest), ["lambda_virus.fa.gz"], xz=True)
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == ["lambda_virus.fa.xz", "model.ckpt"]
    path = common.data_path("lambda_virus.fa.gz", str(dest))
    assert path.endswith(".fa.xz")
    dm = FastaDataModule({"lambda": [path]}, window=500, val_windows=0, test_windows=0, cache_dir=cache)
    dm.setup("fit")
    (rec, n), = dm.sources[0].records
    assert n == 48502 and dm.sources[0].fetch(rec, 0, n) == _lambda_seq().upper()
    common.stage_data(str(dest), ["lambda_virus.fa.gz"])  # back to the plain copy: the .xz one goes
    assert not (dest / "lambda_virus.fa.xz").exists() and (dest / "lambda_virus.fa.gz").is_file()
    with pytest.raises(SystemExit, match="not found"):
        common.data_path("other.fa.gz", str(dest))
