"""rnnkern.torch under DistributedDataParallel on the CPU (gloo), two processes on this machine.

Each process trains the converted classifier on its half of a batch; DDP averages the gradients,
which must equal those of one process on the whole batch with the mean loss, step after step.
Everything stays on the loopback interface (127.0.0.1, GLOO_SOCKET_IFNAME=lo).

This file is also the worker: run as a script it reads torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), so the test launches it the way torchrun does, and once through
torchrun itself:

    GLOO_SOCKET_IFNAME=lo PYTHONPATH=python torchrun --nnodes=1 --nproc-per-node=2 \\
        --master-addr=127.0.0.1 --master-port=29511 tests/test_torch_ddp.py OUT_DIR

torch is imported at module level on purpose: a missing torch is a failure, not a skip.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkern
import rnnkern.torch as rt

WORLD = 2
BATCH, STEPS_T, VOCAB, CLASSES = 8, 7, 20, 3
STEPS = 3  # optimizer steps
TIMEOUT = 150.0  # seconds for a whole distributed run


class Classifier(torch.nn.Module):
    """Embedding -> 2-layer bidirectional LSTM (packed) -> GRU -> linear, float64."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 6, dtype=torch.float64)
        self.lstm = torch.nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True,
                                  dtype=torch.float64)
        self.gru = torch.nn.GRU(10, 4, batch_first=True, dtype=torch.float64)
        self.head = torch.nn.Linear(4, CLASSES, dtype=torch.float64)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        e = self.embed(tokens)  # (B, T, 6)
        packed = pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        _, h = self.gru(out)  # (1, B, 4)
        return self.head(h[0])  # (B, CLASSES)


def make_model() -> torch.nn.Module:
    """The converted classifier, identically initialized in every process."""
    torch.manual_seed(0)
    return rt.convert(Classifier())


def make_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens (B, T), labels (B,), lengths (B,): the same in every process."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (BATCH, STEPS_T), generator=gen)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    lengths = torch.randint(1, STEPS_T + 1, (BATCH,), generator=gen)
    return tokens, labels, lengths


def train(model: torch.nn.Module, rows: slice) -> list[dict[str, torch.Tensor]]:
    """STEPS SGD steps on batch[rows] (mean loss); the gradients of each step, by name."""
    tokens, labels, lengths = make_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    grads = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = F.cross_entropy(model(tokens[rows], lengths[rows]), labels[rows])
        loss.backward()
        module = model.module if isinstance(model, DistributedDataParallel) else model
        grads.append({n: p.grad.detach().clone() for n, p in module.named_parameters()
                      if p.grad is not None})
        opt.step()
    return grads


def worker(out_dir: Path) -> None:
    """One data-parallel process, configured by torchrun's environment variables."""
    torch.set_num_threads(1)  # two processes share the cores
    rnnkern.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        half = BATCH // world
        ddp = DistributedDataParallel(make_model())
        grads = train(ddp, slice(rank * half, (rank + 1) * half))
        torch.save({"grads": grads, "world": world}, out_dir / f"rank{rank}.pt")
        dist.barrier()  # nothing in flight when the group goes
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- the tests


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(port: int) -> dict[str, str]:
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(rnnkern.__file__)))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "PYTHONPATH": package_dir, "OMP_NUM_THREADS": "1"}
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's pairs on loopback too
    return env


def _kill_workers(tag: str) -> None:
    """SIGKILL every process whose command line holds ``tag`` (the run's output directory):
    torchrun starts its workers in sessions of their own, so killing it leaves them running."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if tag.encode() in f.read():
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


def _wait(procs: list[subprocess.Popen[str]], tag: str) -> None:
    """Wait for every process (TIMEOUT in all); kill them all, workers included, and fail on
    timeout or error (a worker left running holds the pipes: communicate would never return)."""
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        _kill_workers(tag)
        for p in procs:
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        raise AssertionError(f"distributed run did not finish in {TIMEOUT} s") from None
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"exit {p.returncode}:\n{out}\n{err}"


def _check(out_dir: Path) -> None:
    """Every rank's averaged gradients equal one process's on the whole batch, every step."""
    want = train(make_model(), slice(0, BATCH))
    for rank in range(WORLD):
        got: dict[str, Any] = torch.load(out_dir / f"rank{rank}.pt")
        assert got["world"] == WORLD
        assert len(got["grads"]) == STEPS
        for step, (g, w) in enumerate(zip(got["grads"], want)):
            assert g.keys() == w.keys()
            assert any(name.startswith("lstm.") for name in g)  # the converted modules train
            for name in w:
                torch.testing.assert_close(g[name], w[name], rtol=1e-9, atol=1e-12,
                                           msg=f"rank {rank} step {step} {name}")


def test_ddp_two_processes_equal_one(tmp_path: Path) -> None:
    """Two processes launched with torchrun's environment, as torchrun would."""
    env = _env(_free_port())
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r),
                                   "WORLD_SIZE": str(WORLD), "LOCAL_WORLD_SIZE": str(WORLD)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(WORLD)]
    _wait(procs, str(tmp_path))
    _check(tmp_path)


def test_ddp_under_torchrun(tmp_path: Path) -> None:
    """The same through torchrun (static rendezvous on 127.0.0.1), as docs/torch.md shows."""
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
           f"--nproc-per-node={WORLD}", "--master-addr=127.0.0.1", f"--master-port={port}",
           __file__, str(tmp_path)]
    proc = subprocess.Popen(cmd, env=_env(port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait([proc], str(tmp_path))
    _check(tmp_path)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
