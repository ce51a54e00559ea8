"""Context parallel over 2 and 3 gloo processes equals the single-process run: outputs and gradients.

Both methods: "correct" (one scan per slice plus the state correction, the default) and "rescan"; causal
and bidirectional stacks, chunked inside each rank's slice, and a decay fast enough that the correction
is skipped after a rank's first chunk (counted), still exact."""
import os
import socket

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from mambaverse.backbones import BidirectionalBackbone, CausalBackbone, RCPSBackbone
from mambaverse.context_parallel import (context_parallel_forward,
                                         enable_context_parallel, gather_stack, shard_sequence)
from mambaverse.errors import ConfigError, ShapeError

WORLD, D, L = 2, 8, 42

CASES = [  # (backbone, its options, chunk_len inside each rank's slice, method)
    ("causal", dict(), None, "correct"),
    ("causal", dict(), 8, "rescan"),  # chunked inside each rank's slice of 21: chunks 8, 8, 5
    # vim_v2 averages the directions (additive scale 0.5) through one shared out_proj
    ("bidirectional", dict(variant="vim_v2", combine="add"), None, "correct"),
    # the directions multiply: a correction would not add, so this layer falls back to rescanning
    ("bidirectional", dict(variant="caduceus", combine="multiply", tie_projections=False), 8, "correct"),
]


def _build(kind, kwargs):
    cls = CausalBackbone if kind == "causal" else BidirectionalBackbone
    return cls(D, n_layer=2, backend="torch", **kwargs).train()


def _check_case(rank, kind, kwargs, chunk_len, method, seed):
    torch.manual_seed(seed)
    model = _build(kind, kwargs)
    g = torch.Generator().manual_seed(seed + 100)
    hidden = torch.randn(2, L, D, generator=g)
    weight = torch.randn(2, L, D, generator=g)
    params = list(model.parameters())
    # single-process reference on the whole sequence
    full = hidden.clone().requires_grad_(True)
    ref = model(full)
    ref_grads = torch.autograd.grad((ref * weight).sum(), [full] + params)
    # context parallel on this rank's slice
    local = shard_sequence(hidden, None).clone().requires_grad_(True)
    out = context_parallel_forward(model, local, None, chunk_len, method=method)
    grads = torch.autograd.grad((out * shard_sequence(weight, None)).sum(), [local] + params)
    torch.testing.assert_close(out, shard_sequence(ref, None).detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], shard_sequence(ref_grads[0], None), rtol=1e-4, atol=1e-5)
    for p_ref, p_loc in zip(ref_grads[1:], grads[1:]):
        total = p_loc.clone()
        dist.all_reduce(total)  # each rank holds its slice's share of every parameter gradient
        torch.testing.assert_close(total, p_ref, rtol=1e-4, atol=1e-5)


def _lightning_step(rank):
    """One SGD step through Trainer + ContextParallelStrategy equals one full-sequence step on one process."""
    import lightning.pytorch as pl  # here, so that the 3-rank workers do not import Lightning

    from mambaverse.training import ContextParallelStrategy

    class _TinyRegressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = CausalBackbone(D, n_layer=2, backend="torch")
            self.head = nn.Linear(D, 1)

        def loss(self, batch):
            return ((self.head(self.backbone(batch["x"])).squeeze(-1) - batch["y"]) ** 2).mean()

        def training_step(self, batch, batch_idx):
            return self.loss(batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(WORLD), RANK=str(rank))
    torch.manual_seed(11)
    module = _TinyRegressor()
    item = {"x": torch.randn(L, D), "y": torch.randn(L)}
    ref = copy.deepcopy(module)
    ref.loss({k: v[None] for k, v in item.items()}).backward()
    expected = [p.detach() - 0.5 * p.grad for p in ref.parameters()]
    trainer = pl.Trainer(accelerator="cpu", devices=WORLD, max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         strategy=ContextParallelStrategy(shard_keys=["x", "y"], process_group_backend="gloo"))
    trainer.fit(module, torch.utils.data.DataLoader([item], batch_size=1))
    for p, want in zip(module.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-4, atol=1e-5)


def _worker(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for i, (kind, kwargs, chunk_len, method) in enumerate(CASES):
            _check_case(rank, kind, kwargs, chunk_len, method, seed=i)
        # the in-place switch used by the Lightning strategy: same parameters, CP forward, no grad
        torch.manual_seed(7)
        model = _build("causal", {}).eval()
        hidden = torch.randn(1, L, D)
        with torch.no_grad():
            ref = model(hidden)
            assert enable_context_parallel(model) == [""]
            torch.testing.assert_close(model(shard_sequence(hidden)), shard_sequence(ref), rtol=1e-4, atol=1e-5)
        # gather_stack: forward gathers, backward sends each rank its own gradient (summed over ranks)
        x = torch.full((3,), float(rank + 1), requires_grad=True)
        stacked = gather_stack(x)
        assert stacked[:, 0].tolist() == [1.0, 2.0]
        (stacked * torch.arange(1.0, WORLD + 1)[:, None]).sum().backward()
        assert x.grad.tolist() == [WORLD * (rank + 1.0)] * 3
        with pytest.raises(ShapeError):
            shard_sequence(torch.zeros(1, 5, D))
        with pytest.raises(ConfigError):
            context_parallel_forward(RCPSBackbone(D, n_layer=1), torch.zeros(1, 4, D))
        _lightning_step(rank)
    finally:
        dist.destroy_process_group()


WORLD3, L3 = 3, 36  # 12 positions per rank


def _counting(mixer, calls):
    """Count the mixer's state_contribution calls (a spy around the real method, which still runs)."""
    real = mixer.state_contribution

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    mixer.state_contribution = spy


def _check3(model, chunk_len, method, seed):
    g = torch.Generator().manual_seed(seed)
    hidden, weight = torch.randn(2, L3, D, generator=g), torch.randn(2, L3, D, generator=g)
    params = list(model.parameters())
    full = hidden.clone().requires_grad_(True)
    ref = model(full)
    ref_grads = torch.autograd.grad((ref * weight).sum(), [full] + params)
    calls = []
    for layer in model.layers:
        _counting(layer.mixer, calls)
    local = shard_sequence(hidden).clone().requires_grad_(True)
    out = context_parallel_forward(model, local, None, chunk_len, method=method)
    forward_calls = len(calls)
    grads = torch.autograd.grad((out * shard_sequence(weight)).sum(), [local] + params)
    torch.testing.assert_close(out, shard_sequence(ref).detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], shard_sequence(ref_grads[0]), rtol=1e-4, atol=1e-5)
    for p_ref, p_loc in zip(ref_grads[1:], grads[1:]):
        total = p_loc.clone()
        dist.all_reduce(total)
        torch.testing.assert_close(total, p_ref, rtol=1e-4, atol=1e-5)
    return forward_calls


def _worker3(rank, rendezvous):
    torch.set_num_threads(1)
    # a file rendezvous: no port that another process on the machine could take in the meantime
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD3)
    try:
        torch.manual_seed(0)
        causal = CausalBackbone(D, n_layer=2, backend="torch").train()
        # chunks 4, 4, 4 per rank: every chunk corrected (2 layers x 3 chunks)
        assert _check3(causal, 4, "correct", 1) == 6
        # untied projections: the reverse direction's correction goes through out_proj_rev; chunks 5, 5, 2
        bi = BidirectionalBackbone(D, n_layer=1, variant="caduceus", combine="add", tie_projections=False,
                                   backend="torch").train()
        assert _check3(bi, 5, "correct", 3) == 2 * 3
        # dt ~ 30: a chunk of 4 steps decays the state by exp(-120), exactly 0 in fp32, so only each
        # rank's first chunk gets a correction, on every rank alike; still exact
        with torch.no_grad():
            for layer in causal.layers:
                layer.mixer.ssm.dt_proj.bias.fill_(30.0)
        assert _check3(causal, 4, "correct", 4) == 2
    finally:
        dist.destroy_process_group()


def test_context_parallel_three_ranks_one_scan_plus_correction(tmp_path):
    mp.spawn(_worker3, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD3, join=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_context_parallel_matches_single_process():
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)


def test_not_initialized_raises():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    with pytest.raises(ConfigError):
        context_parallel_forward(CausalBackbone(D, n_layer=1), torch.zeros(1, 4, D))


def test_block_fsdp_strategy_wraps_residual_blocks():
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from mambaverse.backbones import ResidualBlock
    from mambaverse.training import BlockFSDPStrategy

    s = BlockFSDPStrategy(checkpoint_blocks=True)
    policy = s.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and ResidualBlock in policy._module_classes
    assert "auto_wrap_policy" in s._activation_checkpointing_kwargs
    from mambaverse.training import ContextParallelStrategy

    with pytest.raises(ConfigError):
        ContextParallelStrategy(cp_size=0)
    with pytest.raises(ConfigError, match="method"):
        ContextParallelStrategy(method="twice")
    assert ContextParallelStrategy().method == "correct"


def test_long_context_cp_benchmark_smoke(tmp_path):
    """`benchmarks/long_context.py --cp --smoke` under torchrun on CPU (gloo): the GPU job's code path end to
    end at tiny L; its parity check (both methods vs one process, fp32) must be exact to rounding."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "cp.md"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(repo / "benchmarks" / "long_context.py"),
           "--cp", "--smoke", "--cp-max", "512", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = out.read_text()
    assert "| 2^8 |" in text and "| 2^9 |" in text and "Longest L that trained with context parallel on 2 ranks: 2^9" in text
    errs = [float(x) for x in re.findall(r"rel\. err ([0-9.]+e[+-][0-9]+)", text)]
    assert len(errs) == 4 and max(errs) < 1e-4, text
