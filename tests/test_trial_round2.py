"""Regressions from the round-2 user trial: bad inputs to the DNA benchmark scripts and to the bidirectional and
cross-scan ops end in one line naming the option or tensor, before any work, never a deep traceback or a
silently different result."""
from __future__ import annotations

import pickle

import pytest
import torch

from mambaverse.errors import BackendUnavailableError, MambaverseError, ShapeError
from mambaverse.ops import bidirectional_scan, cross_selective_scan


@pytest.fixture(scope="module")
def pre(load_benchmark):
    return load_benchmark("dna_pretrain_context")


@pytest.fixture(scope="module")
def sweep(load_benchmark):
    return load_benchmark("dna_context_sweep")


def _exit_message(fn, *args) -> str:
    with pytest.raises(SystemExit) as info:
        fn(*args)
    msg = str(info.value.code)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("lengths", [["96", "192"], ["0", "64"], ["-64", "64"]])
def test_lengths_must_be_powers_of_two(pre, sweep, tmp_path, lengths):
    # 96 was accepted and written as 2^6 in the results' 2^k column; 0 and -64 ended in ZeroDivisionError / math errors
    for main in (pre.main, sweep.main):
        msg = _exit_message(main, ["--tiny", "--lengths", *lengths, "--out", str(tmp_path / "out"),
                                   "--work-dir", str(tmp_path / "w")])
        assert "--lengths" in msg and "power of two" in msg
    assert not (tmp_path / "out").exists()


def test_tiny_with_own_lengths_does_not_trip_over_its_noise_length(pre, tmp_path):
    # --tiny --lengths 64 256 stopped at "--noise-lengths [1024]: every one must be in --lengths", an option not given;
    # now it gets as far as the data (a missing folder here, so nothing trains)
    msg = _exit_message(pre.main, ["--tiny", "--lengths", "64", "256", "--data-dir", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "w"),
                                   "--save-ckpt", ""])
    assert "FASTA file not found" in msg


@pytest.mark.parametrize("budget", ["0", "-5", "nan"])
def test_time_budget_must_be_positive(pre, sweep, tmp_path, budget):
    for main in (pre.main, sweep.main):
        msg = _exit_message(main, ["--tiny", f"--time-budget={budget}", "--out", str(tmp_path / "out")])
        assert "--time-budget" in msg and "positive" in msg


def test_gpus_duplicate_or_missing_is_refused_before_any_worker(pre, tmp_path):
    # --gpus 0 on a machine without that GPU ran a worker that died inside Lightning, and the script exited 0
    assert "twice" in _exit_message(pre.main, ["--tiny", "--gpus", "0,0", "--out", str(tmp_path / "out")])
    assert "no CUDA device 99" in _exit_message(pre.main, ["--tiny", "--gpus", "cpu,99", "--out", str(tmp_path / "out")])


def test_output_folders_are_checked_before_the_runs(pre, sweep, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _exit_message(pre.main, ["--tiny", "--out", str(afile)]).startswith(f"--out {afile}")
    assert _exit_message(pre.main, ["--tiny", "--out", str(tmp_path / "o"), "--save-ckpt",
                                    str(afile / "c.ckpt")]).startswith("--save-ckpt")
    assert _exit_message(sweep.main, ["--tiny", "--out", str(afile)]).startswith(f"--out {afile}")
    assert _exit_message(sweep.main, ["--stage-data", str(afile)]).startswith("--stage-data")


def test_pretrained_that_is_no_checkpoint_is_one_line(sweep, tmp_path):
    empty, text, pick, lst = (tmp_path / n for n in ("empty.ckpt", "text.ckpt", "pickle.ckpt", "list.ckpt"))
    empty.write_bytes(b"")
    text.write_text("not a checkpoint\n")
    pick.write_bytes(pickle.dumps({"x": object()}))
    torch.save([1, 2], lst)
    for path in (empty, text, pick, lst):
        msg = _exit_message(sweep.main, ["--tiny", "--pretrained", str(path), "--out", str(tmp_path / "out"),
                                         "--work-dir", str(tmp_path / "w")])
        assert msg.startswith(f"--pretrained {path}") and "--save-ckpt" in msg
    msg = _exit_message(sweep.stage_ckpt, str(pick), tmp_path)
    assert msg.startswith("--stage-ckpt")


def test_pretrained_that_does_not_fit_fails_before_any_run(sweep, tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"backbone.layers.0.weight": torch.zeros(3)}, "hyper_parameters": {}}, path)
    out = tmp_path / "out"
    with pytest.raises((SystemExit, MambaverseError)) as info:
        sweep.main(["--tiny", "--pretrained", str(path), "--out", str(out), "--work-dir", str(tmp_path / "w")])
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
    assert not list(out.glob("dna_context_sweep_*")), "results were written before the checkpoint was checked"


def test_library_errors_become_one_line_in_the_scripts(pre):
    def main():
        raise ShapeError("x.fa: file is empty; expected FASTA records")

    msg = _exit_message(pre.C.run_main, main)
    assert msg.endswith("x.fa: file is empty; expected FASTA records")


def _cross(groups: int, b=1, c=2, h=2, w=3, n=2):
    L = h * w
    return (torch.randn(b, c, h, w), torch.rand(b, 4, c, L), -torch.rand(4 * c, n) - 0.5,
            torch.randn(b, groups, n, L), torch.randn(b, groups, n, L))


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_cross_scan_wants_one_b_c_slice_per_route(groups):
    # other group counts ran on the unfused backends, mixing routes (route 0's B driving route 1's channels),
    # and ended in a plain ValueError from the fused kernel
    for backend in ("naive", "torch", "auto"):
        with pytest.raises(ShapeError, match=r"cross_selective_scan: B has shape .* expected \(1, 4, 2, 6\)"):
            cross_selective_scan(*_cross(groups), backend=backend)
    x, delta, A, B, C = _cross(4)
    with pytest.raises(ShapeError, match="cross_selective_scan: C"):
        cross_selective_scan(x, delta, A, B, C[:, 0], backend="naive")
    assert cross_selective_scan(x, delta, A, B, C, backend="naive").shape == x.shape


def test_unknown_backend_names_the_op_and_its_choices():
    u, A, B = torch.randn(1, 2, 4), -torch.rand(2, 3), torch.randn(1, 3, 4)
    with pytest.raises(BackendUnavailableError, match=r"bidirectional_scan: unknown backend 'nosuch'.*'scan'"):
        bidirectional_scan(u, u.abs(), A, B, B, backend="nosuch")
    with pytest.raises(BackendUnavailableError, match=r"cross_selective_scan: unknown backend 'nosuch'.*'scan'"):
        cross_selective_scan(*_cross(4), backend="nosuch")
    with pytest.raises(MambaverseError, match="unknown backend"):
        bidirectional_scan(u, u.abs(), A, B, B, backend=["naive"])


def test_bidirectional_auto_serves_what_only_the_passes_can_and_triton_says_so():
    # time-invariant B/C (d, n) and per-direction B of different group counts: auto went to the fused kernel
    # (IndexError / ValueError from inside it); now auto runs the passes, equal to the oracle, and triton refuses
    torch.manual_seed(0)
    u, delta, A = torch.randn(2, 4, 8), torch.rand(2, 4, 8), -torch.rand(4, 3) - 0.5
    for B, C in ((torch.randn(4, 3), torch.randn(4, 3)),
                 ((torch.randn(2, 2, 3, 8), torch.randn(2, 4, 3, 8)), (torch.randn(2, 2, 3, 8), torch.randn(2, 4, 3, 8)))):
        want = bidirectional_scan(u, delta, A, B, C, backend="naive")
        torch.testing.assert_close(bidirectional_scan(u, delta, A, B, C, backend="auto"), want)
        with pytest.raises(BackendUnavailableError, match="bidirectional_scan: backend 'triton'"):
            bidirectional_scan(u, delta, A, B, C, backend="triton")
    with pytest.raises(ShapeError, match="u has shape .* forward and .* reverse"):
        bidirectional_scan((u, torch.randn(2, 5, 8)), (delta, torch.rand(2, 5, 8)), (A, -torch.rand(5, 3)),
                           torch.randn(2, 3, 8), torch.randn(2, 3, 8), backend="naive")
