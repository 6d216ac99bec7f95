"""Cross-layer equalization: the float function is unchanged, channel ranges end up equal,
ReLU6 is only replaced when asked (and reported), and per-tensor PTQ gets better."""

from __future__ import annotations

import numpy as np
import torch
from qmodel_factory import GraphBuilder

from edgeres.config import PTQConfig
from edgeres.graph.equalize import _in_range, _out_range, equalize, find_pairs, relu6_to_relu
from edgeres.graph.ir import Graph, run_graph
from edgeres.quant.primitives import sqnr_db
from edgeres.quant.ptq import quantize_graph
from edgeres.targets import load_target


def _chain(act: str = "relu", seed: int = 0) -> Graph:
    """conv -> depthwise -> pointwise (+ skip), with depthwise ranges 100x apart."""
    gb = GraphBuilder((2, 8, 7, 7), seed=seed)
    e = gb.conv(gb.x, 24, 1, act=act, gain=3)
    d = gb.conv(e, 24, 3, groups=24, act=act, gain=2)
    p = gb.conv(d, 8, 1)
    g = gb.build([gb.binary("add", gb.x, p)])
    gains = torch.exp(torch.linspace(0, np.log(100.0), 24)).reshape(-1, 1, 1, 1)
    dw = g.node(d)
    dw.params = {**dw.params, "weight": dw.params["weight"] * gains,
                 "bias": dw.params["bias"] * gains.flatten()}
    return g


def test_function_is_unchanged_and_ranges_equalized() -> None:
    g = _chain("relu")
    before = {n.name: n.params["weight"].clone() for n in g.nodes if "weight" in n.params}
    eq, report = equalize(g)
    assert report.pairs == [("conv2d0", "conv2d1"), ("conv2d1", "conv2d2")]
    assert report.max_log_scale < 1e-4 and not report.relu6_replaced
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(run_graph(eq, x)["add3"], run_graph(g, x)["add3"],
                               rtol=1e-4, atol=1e-4)
    for first, second in (("conv2d0", "conv2d1"), ("conv2d1", "conv2d2")):
        r1, r2 = _out_range(eq.node(first).params["weight"]), _in_range(eq.node(second))
        torch.testing.assert_close(r1, r2, rtol=1e-3, atol=0)
    for name, w in before.items():  # the input graph is untouched
        assert torch.equal(g.node(name).params["weight"], w)


def test_relu6_is_skipped_unless_replaced() -> None:
    g = _chain("relu6")
    pairs, skipped = find_pairs(g)
    assert pairs == [] and all("relu6" in why for *_, why in skipped)
    eq, report = equalize(g, relu6_to_relu_first=True)
    assert report.relu6_replaced == ["conv2d0", "conv2d1"] and len(report.pairs) == 2
    as_relu, _ = relu6_to_relu(g)
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64) * 4
    torch.testing.assert_close(run_graph(eq, x)["add3"], run_graph(as_relu, x)["add3"],
                               rtol=1e-4, atol=1e-4)
    assert all(n.attrs.get("act") != "relu6" for n in eq.nodes)


def test_equalization_helps_per_tensor_ptq() -> None:
    g = _chain("relu")
    eq, _ = equalize(g)
    calib = torch.randn(32, 8, 7, 7)
    x = torch.randn(8, 8, 7, 7, dtype=torch.float64)
    target = load_target("npu-int8-per-tensor")
    ref = run_graph(g, x)["add3"]

    def weights_only(graph: Graph) -> torch.Tensor:  # activations stay float: weight error only
        qm = quantize_graph(graph, PTQConfig(), target, calib)
        return run_graph(qm.graph, x, None, qm.param_overrides())["add3"]

    assert sqnr_db(ref, weights_only(eq)) > sqnr_db(ref, weights_only(g)) + 6
