"""Data-parallel QAT: ``torchrun --nproc_per_node 2`` (gloo on CPU) takes the same step as one
process with the same global batch, and both ranks end up holding identical weights.

This file is also the worker: ``python test_qat_distributed.py OUT TAG`` runs one QAT step on
the tiny model of test_qat and saves this rank's weights to ``OUT/TAG_rank<r>.pt``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def worker(out: Path, tag: str) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    sys.path.insert(0, str(HERE))
    from test_qat import CFG, TinyNet, tiny_data

    from edgeres.quant.qat_train import init_net, run_qat
    from edgeres.targets import load_target

    model = TinyNet()
    train, val = tiny_data(model)
    cfg = replace(CFG, steps=1, batch=16, lr=0.05)
    target = load_target("arm-cpu-tflite")
    res = run_qat(model, target, cfg, train, val, out / tag, progress=False)
    rank = int(os.environ.get("RANK", "0"))
    state = {k: v.detach().clone() for k, v in res.net.state_dict().items()}
    saved = {"state": state, "world": int(os.environ.get("WORLD_SIZE", "1")),
             "steps": res.steps}
    if tag == "single":
        from edgeres.graph.capture import capture

        start, _ = init_net(capture(model, train.x[:1]), target, cfg, train)
        saved["start"] = {k: v.detach().clone() for k, v in start.state_dict().items()}
    torch.save(saved, out / f"{tag}_rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    script = str(Path(__file__).resolve())
    _run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
          "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
          "--master_port", str(_free_port()), script, str(tmp_path), "ddp"])
    _run([sys.executable, script, str(tmp_path), "single"])
    r0, r1 = (torch.load(tmp_path / f"ddp_rank{r}.pt", weights_only=True) for r in (0, 1))
    single = torch.load(tmp_path / "single_rank0.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2 and single["world"] == 1
    assert r0["steps"] == r1["steps"] == single["steps"] == 1
    assert r0["state"].keys() == r1["state"].keys() == single["state"].keys()
    moved = 0
    for k, v in single["state"].items():
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks differ on {k}"
        assert torch.allclose(r0["state"][k], v, rtol=0, atol=1e-6), f"DDP != single on {k}"
        moved += not torch.equal(v, single["start"][k])
    # the step changed weights, biases and learned scales: the equalities above can fail
    assert moved >= len(single["state"]) // 2
    assert (tmp_path / "ddp" / "qat_checkpoint.pt").is_file()


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2])
