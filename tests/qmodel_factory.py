"""Hand-made IR graphs and QModels for per-op tests of exporters and runtimes.

Why not capture a torch module: per-op tests need graphs that contain exactly one kind of op
with chosen attributes (odd padding, depthwise multipliers, softmax axes) and nothing else.

    gb = GraphBuilder((2, 8, 9, 9))
    y = gb.conv(gb.x, 16, k=3, stride=2, padding=(1, 1, 1, 1), act="relu6")
    qm = quantize_minmax(gb.build([y]))

:func:`quantize_minmax` picks activation QParams from a min-max pass of ``run_graph`` on random
data, quantizes weights symmetric per-channel narrow-range int8 with int32 bias on the
input x weight scale grid, ties reshape/transpose outputs to their input, and gives
softmax/sigmoid/tanh the output QParams TFLite fixes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from edgeres.graph.ir import OPS, Graph, Node, TensorInfo, run_graph
from edgeres.qtypes import QParams, QSpec, bias_qparams
from edgeres.quant.primitives import qparams_from_range, quantize_weight, weight_qparams
from edgeres.quant.qmodel import QModel, QuantWeight

ACT_SPEC = QSpec(8, signed=True, symmetric=False)
FIXED = {  # TFLite int8 kernels' fixed output QParams
    "softmax": (1.0 / 256, -128),
    "sigmoid": (1.0 / 256, -128),
    "tanh": (1.0 / 128, 0),
    "hardsigmoid": (1.0 / 255, -128),  # [0, 1] on every code: ADD + MUL keep each one
}
SHARE_INPUT = ("reshape", "transpose")


class GraphBuilder:
    """Builds a Graph node by node; shapes come from the IR's own evaluators."""

    def __init__(self, shape: tuple[int, ...], name: str = "x", seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.nodes: list[Node] = []
        self.inputs = [TensorInfo(name, tuple(shape))]
        self.shapes: dict[str, tuple[int, ...]] = {name: tuple(shape)}
        self.x = name

    def input(self, name: str, shape: tuple[int, ...]) -> str:
        """A second graph input (e.g. for matmul of two activations)."""
        self.inputs.append(TensorInfo(name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return name

    def _rand(self, *shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=self.gen) * scale

    def node(self, op: str, inputs: list[str], attrs: dict | None = None,
             params: dict[str, Tensor] | None = None, name: str | None = None) -> str:
        name = name or f"{op}{len(self.nodes)}"
        n = Node(name, op, list(inputs), name, dict(attrs or {}), dict(params or {}))
        xs = [torch.zeros(self.shapes[i], dtype=torch.float64) for i in inputs]
        p64 = {k: v.to(torch.float64) for k, v in n.params.items()}
        self.shapes[name] = tuple(OPS[op](n, xs, p64).shape)
        self.nodes.append(n)
        return name

    def conv(self, x: str, out: int, k: int = 3, stride: int = 1,
             padding: tuple[int, int, int, int] | None = None, groups: int = 1,
             act: str = "none", bias: bool = True, dilation: int = 1, gain: float = 1.0) -> str:
        """A conv2d node; ``gain`` scales the weights (outputs ~ N(0, gain^2) for N(0,1) input)."""
        c_in = self.shapes[x][1]
        p = (k - 1) // 2 * dilation
        fan_in = c_in // groups * k * k
        params = {"weight": self._rand(out, c_in // groups, k, k, scale=gain * fan_in**-0.5)}
        if bias:
            params["bias"] = self._rand(out, scale=0.1)
        attrs = {"stride": (stride, stride), "padding": padding or (p, p, p, p),
                 "dilation": (dilation, dilation), "groups": groups, "act": act}
        return self.node("conv2d", [x], attrs, params)

    def linear(self, x: str, out: int, act: str = "none", bias: bool = True) -> str:
        c_in = self.shapes[x][-1]
        params = {"weight": self._rand(out, c_in, scale=c_in**-0.5)}
        if bias:
            params["bias"] = self._rand(out, scale=0.1)
        return self.node("linear", [x], {"act": act}, params)

    def binary(self, op: str, a: str, b: str, act: str = "none") -> str:
        return self.node(op, [a, b], {"act": act})

    def mul(self, a: str, b: str | None = None, scalar: float | None = None) -> str:
        if b is None:
            return self.node("mul", [a], {"scalar": scalar})
        return self.node("mul", [a, b], {"scalar": None})

    def mean(self, x: str, axes: list[int], keepdims: bool = True) -> str:
        return self.node("mean", [x], {"axes": list(axes), "keepdims": keepdims})

    def reshape(self, x: str, shape: tuple[int, ...]) -> str:
        return self.node("reshape", [x], {"shape": tuple(shape)})

    def transpose(self, x: str, perm: tuple[int, ...]) -> str:
        return self.node("transpose", [x], {"perm": tuple(perm)})

    def matmul(self, a: str, b: str) -> str:
        return self.node("matmul", [a, b])

    def softmax(self, x: str, axis: int = -1) -> str:
        return self.node("softmax", [x], {"axis": axis})

    def layernorm(self, x: str, axis: int = 1, eps: float = 1e-6) -> str:
        c = self.shapes[x][axis]
        params = {"weight": 1 + self._rand(c, scale=0.2), "bias": self._rand(c, scale=0.2)}
        return self.node("layernorm", [x], {"axis": axis, "eps": eps}, params)

    def act(self, x: str, kind: str) -> str:
        return self.node("act", [x], {"kind": kind})

    def build(self, outputs: list[str]) -> Graph:
        return Graph(list(self.nodes), list(self.inputs), list(outputs), dict(self.shapes))


def calibration_inputs(graph: Graph, n: int = 8, seed: int = 1) -> list[dict[str, Tensor]]:
    """``n`` random normal batches of the graph's static input shapes."""
    gen = torch.Generator().manual_seed(seed)
    return [
        {t.name: torch.randn(*t.shape, generator=gen, dtype=torch.float64) for t in graph.inputs}
        for _ in range(n)
    ]


def quantize_minmax(
    graph: Graph,
    calib: list[dict[str, Tensor]] | None = None,
    per_channel: bool = True,
    float_tensors: tuple[str, ...] = (),
    weight_bits: int = 8,
) -> QModel:
    """A QModel from a min-max pass (see module docstring). ``float_tensors`` stay float."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for batch in calib or calibration_inputs(graph):
        for t, v in run_graph(graph, batch, keep=True).items():
            lo[t] = min(lo.get(t, 0.0), float(v.min()))
            hi[t] = max(hi.get(t, 0.0), float(v.max()))
    act: dict[str, QParams] = {}
    for t in graph.tensors():
        if t in float_tensors:
            continue
        node = graph.producer(t)
        key = None
        if node is not None:
            key = node.attrs.get("kind") if node.op == "act" else node.op
        if node is not None and node.op in SHARE_INPUT and node.inputs[0] in act:
            act[t] = act[node.inputs[0]]
        elif key in FIXED:
            scale, zp = FIXED[key]
            act[t] = QParams(ACT_SPEC, np.float32(scale), np.int64(zp))
        else:
            act[t] = qparams_from_range(ACT_SPEC, lo[t], hi[t])
    wspec = QSpec(weight_bits, True, True, 0 if per_channel else None, narrow_range=True)
    weights: dict[str, QuantWeight] = {}
    for node in graph.nodes:
        if node.op not in ("conv2d", "linear"):
            continue
        w = node.params["weight"]
        wq = weight_qparams(w, wspec)
        qw = QuantWeight(quantize_weight(w, wq), wq)
        b = node.params.get("bias")
        if b is not None and node.inputs[0] in act:
            bq = bias_qparams(act[node.inputs[0]], wq)
            codes = np.round(b.double().numpy() / bq.scale.astype(np.float64))
            codes = np.clip(codes, -(2**31), 2**31 - 1)  # saturate like int32 accumulators
            qw.bias_codes, qw.bias_qparams = codes.astype(np.int32), bq
        weights[node.name] = qw
    return QModel(graph, act, weights)


def random_codes(qmodel: QModel, seed: int = 2, spread: float = 1.0) -> dict[str, np.ndarray]:
    """int8 codes for every graph input, drawn so that they cover the calibrated range."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t in qmodel.graph.inputs:
        x = torch.randn(*t.shape, generator=gen, dtype=torch.float64) * spread
        out[t.name] = qmodel.act_qparams[t.name].quantize(x).numpy().astype(np.int8)
    return out


def simulate_codes(qmodel: QModel, codes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The QModel's output codes (IR layout, int64) for int8 input codes."""
    xs = {
        k: qmodel.act_qparams[k].dequantize(torch.from_numpy(v.astype(np.int64)))
        for k, v in codes.items()
    }
    ys = qmodel.simulate(xs)
    return {
        k: qmodel.act_qparams[k].quantize(ys[k]).numpy() if k in qmodel.act_qparams
        else ys[k].numpy()
        for k in qmodel.graph.outputs
    }
