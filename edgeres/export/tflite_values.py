"""Where each IR tensor lives in the TFLite graph being written: tensor index, layout, dtype.

Why layouts are tracked per tensor instead of converting the whole graph to NHWC: IR graphs
are NCHW, convolutions need NHWC, and attention blocks reshape and permute 4-D tensors that
are not images. A *layout* is the permutation ``L`` with ``tflite_tensor = ir_tensor.permute(L)``;
a value is materialized in another layout (TRANSPOSE, or RESHAPE when only unit dims move) or
dtype (DEQUANTIZE / QUANTIZE) only when a consumer needs it, once, and cached. IR transposes
become free relabellings, and convolution chains never see a TRANSPOSE.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from edgeres.errors import UserError
from edgeres.export.tflite_builder import ModelBuilder, Quant
from edgeres.quant.qmodel import QModel

Layout = tuple[int, ...]
NHWC: Layout = (0, 2, 3, 1)
Q, F = "q", "f"  # value kinds: int8 with the tensor's QParams, or float32


def identity(rank: int) -> Layout:
    return tuple(range(rank))


def io_layout(rank: int) -> Layout:
    """Graph inputs/outputs: images (rank 4) are NHWC, everything else keeps the IR order."""
    return NHWC if rank == 4 else identity(rank)


def permute(shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    return tuple(int(shape[d]) for d in layout)


def same_memory(shape: tuple[int, ...], a: Layout, b: Layout) -> bool:
    """True when two layouts of a tensor only differ by where unit dims sit (same bytes)."""
    return [d for d in a if shape[d] != 1] == [d for d in b if shape[d] != 1]


def layout_name(layout: Layout) -> str:
    if layout == NHWC:
        return "nhwc"
    if layout == identity(len(layout)):
        return "nchw" if len(layout) == 4 else "nd"
    return "perm" + "".join(map(str, layout))


def to_quant(qmodel: QModel, tensor: str) -> Quant:
    qp = qmodel.act_qparams[tensor]
    return Quant(qp.scale, qp.zero_point)


class Values:
    """The lowering context: the builder, the QModel and every IR tensor's TFLite values."""

    def __init__(self, builder: ModelBuilder, qmodel: QModel,
                 lut: frozenset[str] = frozenset()) -> None:
        self.b = builder
        self.q = qmodel
        self.lut = lut  # activation kinds written as int8 lookup tables
        self.shapes = qmodel.graph.shapes
        self._cache: dict[str, dict[tuple[Layout, str], int]] = {}
        self._primary: dict[str, tuple[Layout, str]] = {}

    # -- queries ---------------------------------------------------------------------------
    def layout(self, tensor: str) -> Layout:
        return self._primary[tensor][0]

    def kind(self, tensor: str) -> str:
        return self._primary[tensor][1]

    def quantized(self, tensor: str) -> bool:
        return tensor in self.q.act_qparams

    def rank(self, tensor: str) -> int:
        return len(self.shapes[tensor])

    def quant(self, tensor: str) -> Quant:
        return to_quant(self.q, tensor)

    # -- definitions -----------------------------------------------------------------------
    def new(self, tensor: str, layout: Layout, kind: str, suffix: str = "") -> int:
        """A fresh TFLite tensor holding IR ``tensor`` in ``layout`` as ``kind``."""
        shape = permute(self.shapes[tensor], layout)
        if kind == Q:
            return self.b.tensor(tensor + suffix, shape, np.int8, self.quant(tensor))
        return self.b.tensor(tensor + suffix, shape, np.float32)

    def define(self, tensor: str, idx: int, layout: Layout, kind: str) -> None:
        """Record ``idx`` as the value of ``tensor``; the first definition is the primary one."""
        self._cache.setdefault(tensor, {})[(layout, kind)] = idx
        self._primary.setdefault(tensor, (layout, kind))

    def quantize_primary(self, tensor: str) -> None:
        """Make the int8 value of a float-produced tensor its only value from now on.

        Why drop the float value: in the simulation every consumer sees the quantized
        tensor, so a later float consumer must read DEQUANTIZE(QUANTIZE(y)), not y.
        """
        layout = self.layout(tensor)
        idx = self.get(tensor, layout, Q)
        self._cache[tensor] = {(layout, Q): idx}
        self._primary[tensor] = (layout, Q)

    # -- materialization -------------------------------------------------------------------
    def get(self, tensor: str, layout: Layout | None = None, kind: str | None = None) -> int:
        """The TFLite tensor holding ``tensor`` in ``layout`` as ``kind`` (made on demand)."""
        p_layout, p_kind = self._primary[tensor]
        layout = p_layout if layout is None else tuple(layout)
        kind = kind or p_kind
        cache = self._cache[tensor]
        if (layout, kind) in cache:
            return cache[(layout, kind)]
        if kind != p_kind:
            src = self.get(tensor, layout, p_kind)
            if kind == Q and not self.quantized(tensor):
                raise UserError(f"tensor '{tensor}' is float in the QModel but an int8 op needs it")
            idx = self.new(tensor, layout, kind, "/int8" if kind == Q else "/float")
            self.b.op("QUANTIZE" if kind == Q else "DEQUANTIZE", [src], [idx])
        else:
            src = cache[(p_layout, p_kind)]
            idx = self.new(tensor, layout, kind, "/" + layout_name(layout))
            shape = self.shapes[tensor]
            if same_memory(shape, p_layout, layout):
                self.reshape(src, idx)
            else:
                perm = [p_layout.index(d) for d in layout]
                self.b.op("TRANSPOSE", [src, self.i32(f"{tensor}/perm", perm)], [idx])
        cache[(layout, kind)] = idx
        return idx

    # -- helpers for lowerings -------------------------------------------------------------
    def i32(self, name: str, values: list[int] | np.ndarray) -> int:
        return self.b.const(name, np.asarray(values, np.int32))

    def reshape(self, src: int, dst: int) -> None:
        shape = list(self.b.shape_of(dst))
        opts = fb.ReshapeOptionsT()
        opts.newShape = shape
        name = self.b.tensors[dst].name + "/shape"
        self.b.op("RESHAPE", [src, self.i32(name, shape)], [dst], opts)
