"""What a bundle carries for one family of target beyond the model: TFLM's measured arena and
C arrays for microcontrollers, Vela's compiled model and report for Ethos-U."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeres.bundle import Bundle
from edgeres.check import encode_input
from edgeres.resolve import ResolvedModel
from edgeres.targets import Target


def mcu_extras(
    stage: Path, target: Target, rm: ResolvedModel, golden_x: np.ndarray, bundle: Bundle
) -> dict:
    """TFLM arena (measured on the host interpreter) and the C arrays for firmware."""
    from edgeres import __version__
    from edgeres.export.c import export_c, io_defines
    from edgeres.runtime.tflm import run_tflm

    feed = [encode_input(golden_x[:1], bundle.manifest["inputs"][0])]
    res = run_tflm(bundle.model_file, feed)
    m = bundle.manifest
    export_c(bundle.model_file.read_bytes(), stage, res.arena_bytes, rm.name, target.name,
             __version__, defines=io_defines(m["inputs"], m["outputs"]))
    fits = (
        None if target.memory.arena_bytes is None else res.arena_bytes <= target.memory.arena_bytes
    )
    return {
        "tflm_arena_bytes": res.arena_bytes,
        "arena_budget_bytes": target.memory.arena_bytes,
        "arena_fits": fits,
    }


def vela_extras(stage: Path, target: Target, bundle: Bundle) -> dict:
    """Vela's compiled model and its report: what runs on the NPU, cycles, SRAM and flash."""
    from edgeres.runtime.vela import compile_vela

    v = target.vela
    assert v is not None
    rep = compile_vela(
        bundle.model_file,
        v.accelerator_config,
        out_dir=stage / "vela",
        system_config=v.system_config,
        memory_mode=v.memory_mode,
        config=v.config,
    )
    for extra in (stage / "vela").glob("*"):
        if extra.name != "model_vela.tflite":
            extra.unlink()
    return {
        "vela": {
            "accelerator": rep.accelerator,
            "npu_ops": rep.npu_ops,
            "cpu_ops": rep.cpu_ops,
            "cpu_op_types": rep.cpu_op_types,
            "cycles": rep.cycles_total,
            "inference_ms": rep.inference_time_s * 1e3,
            "sram_bytes": rep.sram_bytes,
            "flash_bytes": rep.flash_bytes,
            "all_on_npu": rep.all_on_npu,
        }
    }
