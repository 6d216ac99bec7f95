"""Compile .tflite models with Arm Vela for Ethos-U NPUs and read what it reports.

Why: an Ethos-U runs only what Vela places on the NPU; everything else falls back to the
Cortex-M CPU. Vela's own summary (cycles, SRAM and flash use) and the optimised model it
writes (NPU parts become one ``ethos-u`` custom op; what is left are CPU ops) are the
ground truth for "which ops run where" on these devices.

>>> r = compile_vela(Path("model.tflite"), "ethos-u55-128")        # doctest: +SKIP
>>> r.cpu_op_types, r.inference_time_s, r.sram_bytes                 # doctest: +SKIP
([], 0.00093, 180224)
"""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ai_edge_litert import schema_py_generated as fb

from edgeres.errors import UserError
from edgeres.export.tflite_builder import op_name

ACCELERATORS = (
    "ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256",
    "ethos-u65-256", "ethos-u65-512",
    "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048",
)
_COUNT_RE = re.compile(r"^(CPU|NPU) operators = (\d+)", re.MULTILINE)
_PLACED_RE = re.compile(r"^\s*(CPU|NPU): (\S+) = (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class VelaReport:
    """What Vela did with one model for one accelerator configuration."""

    accelerator: str
    system_config: str
    memory_mode: str
    npu_ops: int  # Vela's operator count (after its own rewrites) placed on the NPU
    cpu_ops: int  # ... and left on the CPU
    cpu_op_types: list[str]  # TFLite ops the CPU still runs in the optimised model
    placements: list[tuple[str, str, str]]  # (NPU|CPU, Vela op type, tensor/layer)
    cycles_total: int
    inference_time_s: float
    macs: int
    sram_bytes: int
    flash_bytes: int  # on- and off-chip flash
    dram_bytes: int  # U65 system configs keep weights in DRAM instead of flash
    weights_area: str  # where the memory mode stores weights ("Off-chip Flash", "DRAM")
    warnings: list[str] = field(default_factory=list)
    optimized_model: Path | None = None
    summary: dict[str, str] = field(default_factory=dict)

    @property
    def all_on_npu(self) -> bool:
        return self.cpu_ops == 0 and not self.cpu_op_types


def _check_installed() -> None:
    find = importlib.util.find_spec
    if find("ethosu") is None or find("ethosu.vela") is None:
        raise UserError("Arm Vela is not installed: run `pip install 'edgeres[mcu]'`")


def compile_vela(
    model: Path | bytes,
    accelerator: str = "ethos-u55-128",
    out_dir: Path | None = None,
    system_config: str | None = None,
    memory_mode: str | None = None,
    config: str | None = None,
    timeout_s: float = 600.0,
) -> VelaReport:
    """Run ``vela`` on ``model``; keep its outputs in ``out_dir`` when given.

    ``config`` is a Vela .ini (e.g. ``Arm/vela.ini``, shipped with Vela) that defines
    ``system_config`` and ``memory_mode``; without them Vela uses its internal defaults.
    """
    _check_installed()
    if accelerator not in ACCELERATORS:
        raise UserError(
            f"unknown Ethos-U configuration '{accelerator}' (known: {', '.join(ACCELERATORS)})"
        )
    with tempfile.TemporaryDirectory(prefix="edgeres-vela-") as tmp:
        work = Path(tmp)
        src = work / "model.tflite"
        src.write_bytes(model if isinstance(model, bytes | bytearray) else Path(model).read_bytes())
        dest = Path(out_dir) if out_dir is not None else work / "out"
        cmd = [sys.executable, "-m", "ethosu.vela", str(src), "--accelerator-config",
               accelerator, "--output-dir", str(dest), "--show-cpu-operations"]
        if config:
            cmd += ["--config", config]
        if system_config:
            cmd += ["--system-config", system_config]
        if memory_mode:
            cmd += ["--memory-mode", memory_mode]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise UserError(f"Vela did not finish within {timeout_s:.0f} s") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise UserError(f"Vela failed for {accelerator}: {' | '.join(tail)}")
        summaries = sorted(dest.glob("model_summary_*.csv"))
        optimized = dest / "model_vela.tflite"
        if not summaries or not optimized.is_file():
            raise UserError(f"Vela wrote no summary/model in {dest}")
        with summaries[0].open(newline="") as f:
            row = next(csv.DictReader(f))
        cpu_types = _cpu_op_types(optimized.read_bytes())
        return _report(accelerator, row, proc.stdout + proc.stderr, cpu_types,
                       optimized if out_dir is not None else None)


def _cpu_op_types(data: bytes) -> list[str]:
    """Operators left outside the ``ethos-u`` custom op: the CPU runs those."""
    m = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    out = []
    for o in m.subgraphs[0].operators or []:
        code = m.operatorCodes[o.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == fb.BuiltinOperator.CUSTOM:
            custom = code.customCode
            custom = custom.decode() if isinstance(custom, bytes) else custom
            if custom == "ethos-u":
                continue
            out.append(f"CUSTOM:{custom}")
        else:
            out.append(op_name(builtin))
    return out


def _report(accelerator: str, row: dict[str, str], log: str, cpu_types: list[str],
            optimized: Path | None) -> VelaReport:
    counts = {k: int(v) for k, v in _COUNT_RE.findall(log)}
    placements = [(a, b, c.strip()) for a, b, c in _PLACED_RE.findall(log)]
    warnings = [ln.strip() for ln in log.splitlines() if ln.strip().lower().startswith("warning")]

    def num(key: str) -> float:
        try:
            return float(row.get(key, "nan"))
        except ValueError:
            return float("nan")

    kib = 1024
    return VelaReport(
        accelerator=accelerator,
        system_config=row.get("system_config", ""),
        memory_mode=row.get("memory_mode", ""),
        npu_ops=counts.get("NPU", 0),
        cpu_ops=counts.get("CPU", len(cpu_types)),
        cpu_op_types=cpu_types,
        placements=placements,
        cycles_total=int(num("cycles_total")),
        inference_time_s=num("inference_time"),
        macs=int(num("nn_macs")),
        sram_bytes=int(round(num("sram_memory_used") * kib)),
        flash_bytes=int(round((num("off_chip_flash_memory_used")
                               + num("on_chip_flash_memory_used")) * kib)),
        dram_bytes=int(round(num("dram_memory_used") * kib)),
        weights_area=row.get("weights_storage_area", ""),
        warnings=warnings,
        optimized_model=optimized,
        summary=dict(row),
    )
