"""The same command writes the same bundle on every CPU (DESIGN: deterministic builds, so app
builds can cache them, and a published figure is the figure a user measures).

Oracle: the model file's bytes. Each run is a fresh process whose kernels are steered to
another instruction set the way a different machine would pick them (ATen's dispatch, oneDNN
and MKL caps), here down to no SIMD at all. Before calibration ran in float64, MobileNetV2
gave a different file under each of the three: float32 convolutions, MKL's vector sqrt (BN
folding) and resampling round differently per instruction set.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

NO_SIMD = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
           "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def _convert(out: Path, isa: dict[str, str]) -> str:
    env = {**os.environ, **isa}
    argv = ["convert", "mobilenet_v2_fmnist", "--calib", "fmnist:train@64", "--eval",
            "fmnist:test@100", "--out", str(out), "--no-bench"]
    code = f"from edgeres.cli import main; raise SystemExit(main({argv!r}))"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()


def _has_avx512() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and "avx512f" in cpuinfo.read_text()


@pytest.mark.slow
def test_same_model_file_on_every_instruction_set(tmp_path: Path) -> None:
    native = _convert(tmp_path / "native", {})
    assert _convert(tmp_path / "no-simd", NO_SIMD) == native
    if _has_avx512():  # an AVX-512 server and an AVX2 laptop
        assert _convert(tmp_path / "avx2", AVX2) == native
