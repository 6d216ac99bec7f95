"""Targets as data: what a device can run, loaded from ``targets/<name>.toml`` and checked.

A quantization plan is checked against its target before anything runs, so every fact the
planner and the exporters rely on (bit widths, granularity, signedness, op set, I/O dtype,
memory budget, format, runtime) lives in one typed, frozen :class:`Target`. A bad profile is a
:class:`~edgeres.errors.UserError` naming the file, the key and the allowed values.

>>> t = load_target("npu-int8-per-tensor")
>>> t.check_qspec(t.weight_qspec(8), layer="features.3.conv.1.0", depthwise=True).spec.per_channel
False
"""

from __future__ import annotations

import os
import tomllib
import types
from dataclasses import MISSING, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin, get_type_hints

import tomli_w

from edgeres.errors import UserError
from edgeres.graph.ir import ACTIVATIONS, MAX_RANK, OPS
from edgeres.paths import write_bytes_atomic
from edgeres.qtypes import QSpec

Family = Literal["cpu", "npu", "mcu"]
Format = Literal["onnx", "tflite", "c"]
Runtime = Literal["onnxruntime", "litert-xnnpack", "litert-ref", "tflm", "vela"]
Granularity = Literal["per-channel", "per-tensor"]
IODtype = Literal["int8", "uint8", "float32"]
Bits = Literal[2, 3, 4, 5, 6, 7, 8, 16]
BiasBits = Literal[32, 64]
# IR ops a profile may list; activation kinds (the ``act`` op) are listed separately.
OpName = Literal[tuple(sorted(op for op in OPS if op != "act"))]  # type: ignore[valid-type]
ActKind = Literal[tuple(a for a in ACTIVATIONS if a != "none")]  # type: ignore[valid-type]
Transport = Literal["local", "ssh", "adb"]
Placement = Literal["integer", "host", "float"]
# Accelerator names exactly as Vela spells them (``vela --accelerator-config``).
VelaAccelerator = Literal[
    "ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256",
    "ethos-u65-256", "ethos-u65-512",
    "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048",
]  # fmt: skip
VelaOptimise = Literal["Performance", "Size"]
# How an activation without a native int8 kernel is written (see :class:`Lowering`).
SiluLowering = Literal["kernel", "lookup-table", "sigmoid-mul"]
GeluLowering = Literal["kernel", "lookup-table"]

# Which file formats each runtime can load.
RUNTIME_FORMATS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnx",),
    "litert-xnnpack": ("tflite",),
    "litert-ref": ("tflite",),
    "tflm": ("tflite", "c"),
    "vela": ("tflite",),
}


class ProfileError(ValueError):
    """A profile value is wrong; ``key`` is its dotted TOML key. The loader adds the file name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"key '{key}': {message}")
        self.key = key


@dataclass(frozen=True)
class WeightRules:
    """Weight formats the target's kernels accept. The first listed granularity is not special:
    per-channel is always preferred when allowed, because it is the more accurate."""

    bits: tuple[Bits, ...]
    granularity: tuple[Granularity, ...]
    depthwise_granularity: tuple[Granularity, ...]
    signed: bool = True
    symmetric: bool = True
    narrow_range: bool = True
    # ONNX files only: write the int8 codes as uint8 + 128 (zero point 128), the same values,
    # so ONNX Runtime runs its U8U8 kernels, exact on x86 CPUs without VNNI where its U8S8
    # ones saturate (edgeres.export.onnx_uint8)
    uint8_storage: bool = False

    def __post_init__(self) -> None:
        for key in ("bits", "granularity", "depthwise_granularity"):
            if not getattr(self, key):
                raise ProfileError(f"weights.{key}", "must list at least one value")
        if self.symmetric and not self.signed:
            raise ProfileError("weights.symmetric", "symmetric weights must be signed")
        if self.narrow_range and not self.signed:
            raise ProfileError("weights.narrow_range", "narrow range applies to signed weights")


@dataclass(frozen=True)
class ActivationRules:
    """Activation formats: bit widths, int (signed) or uint, and whether zero points must be 0."""

    bits: tuple[Bits, ...]
    signed: bool
    symmetric: bool = False

    def __post_init__(self) -> None:
        if not self.bits:
            raise ProfileError("activations.bits", "must list at least one value")


@dataclass(frozen=True)
class OpGroup:
    """IR ops and activation kinds (standalone ``act`` nodes) that run in one place."""

    ops: tuple[OpName, ...] = ()
    activations: tuple[ActKind, ...] = ()


@dataclass(frozen=True)
class Lowering:
    """How GELU and SiLU are written for the runtime: ``kernel``, its own op (TFLite has no
    int8 SiLU, so there it runs in float); ``lookup-table``, an exact int8 table (CAST, ADD,
    GATHER: every runtime with int8 GATHER, TFLite formats only); ``sigmoid-mul`` (SiLU only),
    ``x * sigmoid(x)`` as two int8 ops, for an accelerator with int8 LOGISTIC and MUL but no
    GATHER (Ethos-U). The graph rewrite happens before calibration, so the simulation, the
    exported file and the float reference all see the same nodes."""

    gelu: GeluLowering = "kernel"
    silu: SiluLowering = "kernel"

    def to_json(self) -> dict[str, str]:
        return {"gelu": self.gelu, "silu": self.silu}

    def lookup_tables(self) -> frozenset[str]:
        """Activation kinds written as lookup tables."""
        return frozenset(k for k in ("gelu", "silu") if getattr(self, k) == "lookup-table")


@dataclass(frozen=True)
class OpSet:
    """Where each IR op runs. ``integer``: in integer on the target's own engine; ``host``: in
    integer on the host CPU (NPU targets: ops the accelerator leaves to the CPU); ``float``:
    dequantize, float kernel, quantize. An op in no group is not supported at all."""

    integer: OpGroup
    fused_activations: tuple[ActKind, ...]
    host: OpGroup = OpGroup()
    float: OpGroup = OpGroup()
    lowering: Lowering = Lowering()

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for group in ("integer", "host", "float"):
            g: OpGroup = getattr(self, group)
            for kind, names in (("ops", g.ops), ("activations", g.activations)):
                for name in names:
                    where = seen.setdefault(f"{kind}:{name}", group)
                    if where != group:
                        raise ProfileError(
                            f"ops.{group}.{kind}",
                            f"'{name}' is also listed in ops.{where}.{kind}; list it once",
                        )


@dataclass(frozen=True)
class Limits:
    """Shape limits of the target's kernels; None means no limit beyond the IR's own."""

    max_rank: int
    max_batch: int | None = None
    max_dim: int | None = None  # any single tensor dimension
    max_stride: int | None = None  # conv and depthwise strides
    mean_max_reduced: int | None = None  # product of the reduced axes of a mean
    mean_max_axis: int | None = None  # size of a reduced W or C axis of a mean
    softmax_max_hw: int | None = None  # H x W of a softmax input
    max_weight_sum: int | None = None  # per output channel, sum of |code - zero point|

    def __post_init__(self) -> None:
        if not 1 <= self.max_rank <= MAX_RANK:
            raise ProfileError("limits.max_rank", f"must be in [1, {MAX_RANK}] (the IR's limit)")
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and v < 1:
                raise ProfileError(f"limits.{f.name}", "must be >= 1")


@dataclass(frozen=True)
class Memory:
    """Memory of the device, in bytes. ``arena_bytes`` is the budget for the runtime's tensor
    arena (the largest contiguous block left to it); ``model_bytes`` for the model's constants."""

    sram_bytes: int | None = None
    arena_bytes: int | None = None
    flash_bytes: int | None = None
    model_bytes: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and v < 1:
                raise ProfileError(f"memory.{f.name}", "must be >= 1")
        if self.arena_bytes and self.sram_bytes and self.arena_bytes > self.sram_bytes:
            raise ProfileError("memory.arena_bytes", "must not exceed memory.sram_bytes")
        if self.model_bytes and self.flash_bytes and self.model_bytes > self.flash_bytes:
            raise ProfileError("memory.model_bytes", "must not exceed memory.flash_bytes")


@dataclass(frozen=True)
class Device:
    """How the harness reaches a real device; ``local`` runs the target's runtime on this host."""

    transport: Transport = "local"
    host: str = ""
    workdir: str = ""


@dataclass(frozen=True)
class VelaConfig:
    """Vela command line: ``--accelerator-config``, ``--system-config``, ``--memory-mode`` (the
    last two are sections of ``config``, Vela's shipped ``Arm/vela.ini`` by default).
    ``npu_ops``: TFLite builtins the NPU must run; the Vela runner checks its placement report."""

    accelerator_config: VelaAccelerator
    system_config: str
    memory_mode: str
    config: str = "Arm/vela.ini"
    optimise: VelaOptimise = "Performance"
    npu_ops: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """One device profile. Built from ``targets/<name>.toml`` by :func:`load_target`."""

    name: str
    description: str
    family: Family
    format: Format
    runtime: Runtime
    io_dtype: IODtype
    bias_bits: BiasBits
    weights: WeightRules
    activations: ActivationRules
    ops: OpSet
    limits: Limits
    memory: Memory = Memory()
    latency_ms: float | None = None
    device: Device = Device()
    vela: VelaConfig | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ProfileError("name", "must not be empty")
        if self.format not in RUNTIME_FORMATS[self.runtime]:
            allowed = ", ".join(RUNTIME_FORMATS[self.runtime])
            raise ProfileError(
                "format",
                f"'{self.format}' cannot run on runtime '{self.runtime}' (allowed: {allowed})",
            )
        if (self.runtime == "vela") != (self.vela is not None):
            raise ProfileError(
                "vela", "a [vela] table is required for runtime 'vela' and only then"
            )
        self._check_io_dtype()
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise ProfileError("latency_ms", "must be > 0")
        if self.weights.uint8_storage and (self.format != "onnx" or self.weights.bits != (8,)):
            raise ProfileError("weights.uint8_storage", "stores 8-bit weights of ONNX files: "
                               "needs format = \"onnx\" and weights.bits = [8]")
        self._check_lowering()

    def _check_io_dtype(self) -> None:
        """Integer model inputs/outputs are 8-bit activations: the activation rules must have
        8 bits and the same signedness (the message names which of the two is wrong)."""
        if self.io_dtype == "float32":
            return
        allowed = _join(get_args(IODtype))
        acts = self.activations
        if 8 not in acts.bits:
            raise ProfileError(
                "io_dtype", f"'{self.io_dtype}' needs 8-bit activations but activations.bits is "
                f"{list(acts.bits)}: add 8 to activations.bits, or set io_dtype = \"float32\" "
                f"(allowed values: {allowed})")
        kind = "int8" if acts.signed else "uint8"
        if self.io_dtype != kind:
            raise ProfileError(
                "io_dtype", f"'{self.io_dtype}' does not match activations.signed = "
                f"{str(acts.signed).lower()} ({kind} activations): set io_dtype = \"{kind}\" "
                f"or \"float32\" (allowed values: {allowed})")

    def _check_lowering(self) -> None:
        low = self.ops.lowering
        if low.lookup_tables() and self.format == "onnx":
            kind = sorted(low.lookup_tables())[0]
            raise ProfileError(f"ops.lowering.{kind}",
                               "'lookup-table' is written for TFLite formats only (use 'kernel')")
        if low.silu == "sigmoid-mul":
            placed = {g: getattr(self.ops, g) for g in ("integer", "host")}
            if not any("sigmoid" in g.activations for g in placed.values()) or not any(
                    "mul" in g.ops for g in placed.values()):
                raise ProfileError("ops.lowering.silu", "'sigmoid-mul' needs 'sigmoid' among "
                                   "the integer activations and 'mul' among the integer ops")

    # -- quantization formats ---------------------------------------------------------------

    def activation_qspec(self, bits: int = 8) -> QSpec:
        """The per-tensor QSpec of an activation at ``bits``; UserError if the target lacks it."""
        if bits not in self.activations.bits:
            raise UserError(
                f"a{bits} not supported by {self.name}: allowed activation bits "
                f"{_join(self.activations.bits)}"
            )
        return QSpec(bits, self.activations.signed, self.activations.symmetric, None, False)

    def weight_granularities(self, depthwise: bool) -> tuple[str, ...]:
        w = self.weights
        return w.depthwise_granularity if depthwise else w.granularity

    def weight_qspec(self, bits: int = 8, depthwise: bool = False) -> QSpec:
        """The best weight QSpec the target runs at ``bits``: per-channel (axis 0) when allowed."""
        if bits not in self.weights.bits:
            allowed = _join(self.weights.bits)
            raise UserError(f"w{bits} not supported by {self.name}: allowed weight bits {allowed}")
        per_channel = "per-channel" in self.weight_granularities(depthwise)
        return self._weight_spec(bits, per_channel)

    def _weight_spec(self, bits: int, per_channel: bool) -> QSpec:
        w = self.weights
        return QSpec(bits, w.signed, w.symmetric, 0 if per_channel else None, w.narrow_range)

    def check_qspec(self, spec: QSpec, *, layer: str, depthwise: bool = False) -> Honoured:
        """The weight QSpec the target can honour for ``layer``, with the reason if it changed.

        Bits the target lacks become the nearest wider allowed width (else the widest); a
        granularity it lacks becomes the other one; signedness, symmetry and narrow range are
        the target's.
        """
        changes: list[str] = []
        bits = _nearest_bits(spec.bits, self.weights.bits)
        if bits != spec.bits:
            changes.append(
                f"w{spec.bits} not supported on {self.name} (allowed weight bits "
                f"{_join(self.weights.bits)}) -> w{bits}"
            )
        allowed = self.weight_granularities(depthwise)
        asked = "per-channel" if spec.per_channel else "per-tensor"
        per_channel = spec.per_channel if asked in allowed else not spec.per_channel
        if asked not in allowed:
            what = f"{'depthwise ' if depthwise else ''}{asked}"
            changes.append(f"{what} not supported on {self.name} -> {allowed[0]}")
        out = self._weight_spec(bits, per_channel)
        if per_channel and spec.per_channel:
            out = replace(out, axis=spec.axis)
        changes += _format_changes(spec, out, self.name)
        return Honoured(out, _reason(layer, changes))

    def check_activation_qspec(self, spec: QSpec, *, tensor: str) -> Honoured:
        """The activation QSpec the target can honour for ``tensor``, with the reason if changed."""
        changes: list[str] = []
        bits = _nearest_bits(spec.bits, self.activations.bits)
        if bits != spec.bits:
            changes.append(
                f"a{spec.bits} not supported on {self.name} (allowed activation bits "
                f"{_join(self.activations.bits)}) -> a{bits}"
            )
        if spec.per_channel:
            changes.append(f"per-channel activations not supported on {self.name} -> per-tensor")
        a = self.activations
        out = QSpec(bits, a.signed, a.symmetric, None, False)
        changes += _format_changes(spec, out, self.name)
        return Honoured(out, _reason(tensor, changes, what="tensor"))

    # -- op set -----------------------------------------------------------------------------

    def placement(self, op: str, act: str | None = None) -> Placement | None:
        """Where IR ``op`` runs (for ``op == "act"``, where activation ``act`` runs); None if
        the target cannot run it."""
        for group in ("integer", "host", "float"):
            g: OpGroup = getattr(self.ops, group)
            if (act in g.activations) if op == "act" else (op in g.ops):
                return group  # type: ignore[return-value]
        return None

    def fuses(self, act: str) -> bool:
        """Whether a conv/linear/add kernel can apply activation ``act`` itself."""
        return act == "none" or act in self.ops.fused_activations

    # -- serialisation ----------------------------------------------------------------------

    def to_json(self) -> dict:
        return _plain(self, keep_none=True)

    @classmethod
    def from_json(cls, data: dict, source: str = "<json>") -> Target:
        return _build_target(data, source)

    def to_toml(self) -> str:
        return tomli_w.dumps(_plain(self, keep_none=False))

    @classmethod
    def from_toml(cls, text: str, source: str = "<toml>") -> Target:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{source}: not valid TOML: {e}") from None
        return _build_target(data, source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the profile as TOML, atomically."""
        path = Path(path)
        write_bytes_atomic(path, self.to_toml().encode("utf-8"))
        return path


class Honoured(NamedTuple):
    """What :meth:`Target.check_qspec` returns: the QSpec to use and why it changed (or None)."""

    spec: QSpec
    reason: str | None


def _join(values: tuple) -> str:
    return ", ".join(str(v) for v in values)


def _nearest_bits(bits: int, allowed: tuple[int, ...]) -> int:
    """``bits`` if allowed, else the narrowest allowed width above it, else the widest."""
    if bits in allowed:
        return bits
    wider = [b for b in allowed if b > bits]
    return min(wider) if wider else max(allowed)


def _format_changes(asked: QSpec, got: QSpec, target: str) -> list[str]:
    out = []
    if asked.signed != got.signed:
        kind = "int" if got.signed else "uint"
        out.append(f"{'int' if asked.signed else 'uint'} not supported on {target} -> {kind}")
    if asked.symmetric != got.symmetric:
        sym = "symmetric" if got.symmetric else "asymmetric"
        out.append(f"{target} requires {sym} quantization -> {sym}")
    if asked.narrow_range != got.narrow_range:
        out.append(f"{target} uses {'narrow' if got.narrow_range else 'full'} range")
    return out


def _reason(name: str, changes: list[str], what: str = "layer") -> str | None:
    return f"{what} {name}: " + "; ".join(changes) if changes else None


# -- building typed dataclasses from TOML/JSON data, with errors that name the key ----------


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _describe(inner[0])
    if is_dataclass(tp):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return None if value is None else _convert(inner[0], value, key)
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool) or value not in allowed:
            raise ProfileError(key, f"{value!r} is not allowed (allowed values: {_join(allowed)})")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ProfileError(key, f"must be {_describe(tp)}, got {value!r}")
        return tuple(_convert(get_args(tp)[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ProfileError(key, f"must be a table, got {value!r}")
        return _build(tp, value, key + ".")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise ProfileError(key, f"must be {_describe(tp)}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise ProfileError(
                f"{prefix}{key}", f"unknown key (allowed keys: {_join(tuple(names))})"
            )
    kwargs = {}
    for f in fields(cls):
        key = prefix + f.name
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], key)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ProfileError(key, f"required key missing (must be {_describe(hints[f.name])})")
    return cls(**kwargs)


def _build_target(data: dict, source: str) -> Target:
    if not isinstance(data, dict):
        raise UserError(
            f"{source}: a target profile must be a table of keys, got {type(data).__name__}"
        )
    try:
        return _build(Target, data)
    except ProfileError as e:
        raise UserError(f"{source}: {e}") from None


def _plain(obj: Any, keep_none: bool) -> Any:
    if is_dataclass(obj):
        out = {}
        for f in fields(obj):
            v = _plain(getattr(obj, f.name), keep_none)
            if v is not None or keep_none:
                out[f.name] = v
        return out
    if isinstance(obj, tuple):
        return [_plain(v, keep_none) for v in obj]
    return obj


# -- finding and loading profiles -----------------------------------------------------------


def targets_dir() -> Path:
    """The built-in profiles: ``targets/`` of a source checkout, else ``edgeres/_targets``
    (where a wheel build must place a copy of them)."""
    here = Path(__file__).resolve().parent
    repo = here.parent
    if (repo / "targets").is_dir() and (repo / "pyproject.toml").is_file():
        return repo / "targets"
    return here / "_targets"


def target_names() -> list[str]:
    """Names of the built-in targets (for ``edgeres targets --names``), sorted."""
    return sorted(p.stem for p in targets_dir().glob("*.toml"))


def list_targets() -> list[Target]:
    """Every built-in target, loaded and validated, sorted by name."""
    return [load_target(n) for n in target_names()]


def load_target(name_or_path: str | os.PathLike) -> Target:
    """A built-in target by name (``"cortex-m7"``) or a profile file by path."""
    text = str(name_or_path)
    path = Path(text)
    builtin = not (text.endswith(".toml") or os.sep in text or "/" in text)
    if builtin and (targets_dir() / f"{text}.toml").is_file():
        path = targets_dir() / f"{text}.toml"
    elif path.is_dir():
        raise UserError(f"target '{text}' is a directory, not a .toml target profile: pass a "
                        f"profile file (e.g. targets/arm-cpu-tflite.toml) or a name from "
                        f"`edgeres targets`")
    elif builtin:
        raise UserError(f"unknown target '{text}'; known targets: {', '.join(target_names())} "
                        "(or pass the path of a .toml profile)")
    elif not path.is_file():
        raise UserError(f"target profile {path} not found")
    try:
        text_data = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read target profile: {e}") from None
    target = Target.from_toml(text_data, source=str(path))
    if builtin and target.name != path.stem:
        raise UserError(f"{path}: key 'name' is '{target.name}' but the file is '{path.stem}.toml'")
    return target
