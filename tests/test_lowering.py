"""Targets say how GELU and SiLU are written (``[ops.lowering]``), and the Python API
(``quantize`` then ``export``) follows the profile exactly as ``edgeres convert`` does.

Oracle: ``QModel.simulate``; the file runs in LiteRT's reference kernels (1 LSB, their
fixed-point requantization) and, for Ethos-U, in Vela's own placement report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgeres
from edgeres.runtime.litert import run_tflite


class _GatedNet(nn.Module):
    """conv -> SiLU -> conv -> GELU -> mean -> linear: EMO's two activations, nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.silu = nn.SiLU()
        self.mix = nn.Conv2d(8, 8, 1)
        self.gelu = nn.GELU()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gelu(self.mix(self.silu(self.stem(x))))
        return self.head(y.mean((2, 3)))


@pytest.fixture(scope="module")
def net_and_data() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _GatedNet().eval(), torch.randn(32, 3, 8, 8)


# target -> TFLite ops that must carry the activations, ops that must not appear
EXPECTED = {
    "arm-cpu-tflite": ({"GATHER"}, {"LOGISTIC", "GELU"}),
    "cortex-m4": ({"GATHER"}, {"LOGISTIC", "GELU"}),
    "ethos-u55-128": ({"LOGISTIC", "MUL", "GELU"}, {"GATHER"}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_api_export_follows_the_profile(name: str, net_and_data, tmp_path: Path) -> None:
    net, calib = net_and_data
    target = edgeres.load_target(name)
    qm = edgeres.quantize(net, edgeres.PTQConfig(), target, calib)
    info = edgeres.export(qm, tmp_path / "m.tflite", io_dtype="float32")
    must, must_not = EXPECTED[name]
    assert info.float_ops == [], info.float_ops  # no float island: SiLU and GELU are integer
    assert must <= set(info.ops) and not must_not & set(info.ops), info.ops
    x = calib[:8]
    got = run_tflite(info.path, [x.permute(0, 2, 3, 1).numpy()])[0]
    out = qm.graph.outputs[0]
    want = qm.simulate(x.to(torch.float64))[out].numpy()
    step = float(qm.act_qparams[out].scale)
    assert np.abs(got - want).max() <= 1.01 * step


def test_profile_lowering_can_be_overridden(net_and_data, tmp_path: Path) -> None:
    """``lut_activations=False`` asks for TFLite's own ops: SiLU becomes a float island."""
    net, calib = net_and_data
    qm = edgeres.quantize(net, edgeres.PTQConfig(), edgeres.load_target("arm-cpu-tflite"), calib)
    info = edgeres.export(qm, tmp_path / "m.tflite", lut_activations=False)
    assert [f.op for f in info.float_ops] == ["act:silu"]
    assert "GATHER" not in info.ops and "GELU" in info.ops


def test_vela_runs_the_api_export_on_the_npu(net_and_data, tmp_path: Path) -> None:
    pytest.importorskip("ethosu.vela", reason="ethos-u-vela not installed (extra 'mcu')")
    from edgeres.runtime.vela import compile_vela

    net, calib = net_and_data
    qm = edgeres.quantize(net, edgeres.PTQConfig(), edgeres.load_target("ethos-u55-128"), calib)
    info = edgeres.export(qm, tmp_path / "m.tflite")
    r = compile_vela(info.path.read_bytes(), "ethos-u55-128")
    assert r.all_on_npu, r.cpu_op_types


def test_export_stays_the_function_after_submodule_imports() -> None:
    """``edgeres.export`` is both the public function and the exporters' subpackage; importing
    ``edgeres.export.tflite`` (as convert does) once replaced the function with the module."""
    import edgeres.export.onnx  # noqa: F401
    import edgeres.export.tflite  # noqa: F401

    assert callable(edgeres.export)
    with pytest.raises(edgeres.UserError, match="suffix"):
        edgeres.export(None, "model.bin")
