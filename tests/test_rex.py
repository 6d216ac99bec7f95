"""REx: the expansion's numerics (property tests), the graph transform against the float
layer it replaces, the budget search, bad input, and the exported models against the
simulation in LiteRT and ONNX Runtime."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from qmodel_factory import GraphBuilder

from edgeres.config import PTQConfig, RExConfig
from edgeres.errors import UserError
from edgeres.graph.ir import Graph, graph_macs, run_graph
from edgeres.graph.rex_expand import expand_graph, find_regions, quantize_rex, tighten_sums
from edgeres.qtypes import QSpec
from edgeres.quant.primitives import quantize_weight, sqnr_db, weight_qparams
from edgeres.quant.ptq import layer_errors, quantize_graph
from edgeres.quant.rex import expand_weight, kept_count, reconstruct, term_spec, top_rows
from edgeres.quant.rex_budget import LayerChoice
from edgeres.targets import Memory, load_target

BITS = (2, 3, 4, 6, 8)
NPU = "npu-int8-per-tensor"


def _spec(bits: int, per_channel: bool) -> QSpec:
    return QSpec(bits, True, True, 0 if per_channel else None, narrow_range=True)


weights = st.tuples(
    st.integers(1, 12), st.integers(1, 6), st.sampled_from([1, 3]), st.integers(0, 2**16)
).map(lambda t: torch.randn(t[0], t[1], t[2], t[2], generator=torch.Generator().manual_seed(t[3]))
      * torch.exp(torch.randn(t[0], 1, 1, 1, generator=torch.Generator().manual_seed(t[3] + 1))))


# -- the expansion, as tensors -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(w=weights, bits=st.sampled_from(BITS), per_channel=st.booleans(),
       gamma=st.sampled_from([0.0, 0.25, 0.5, 0.75]), method=st.sampled_from(["minmax", "mse"]))
def test_error_never_grows_with_order(w, bits, per_channel, gamma, method) -> None:
    """Elementwise, not just in norm: a zero-centred round-to-nearest never adds error."""
    rows = top_rows(torch.rand(w.shape[0]), gamma) if gamma else None
    terms = expand_weight(w, _spec(bits, per_channel), 4, rows, method)
    w64 = w.double()
    prev = (w64 - reconstruct(terms[:1])).abs()
    for k in range(2, 5):
        err = (w64 - reconstruct(terms[:k])).abs()
        assert torch.all(err <= prev + 1e-12)
        prev = err


@settings(max_examples=40, deadline=None)
@given(w=weights, bits=st.sampled_from(BITS), per_channel=st.booleans())
def test_dense_expansion_converges_to_float(w, bits, per_channel) -> None:
    """gamma = 0, large K: the expanded layer's weight is the float weight (to ~1e-6)."""
    order = int(np.ceil(48 / max(bits - 1, 1)))
    terms = expand_weight(w, _spec(bits, per_channel), order, method="minmax")
    err = (w.double() - reconstruct(terms)).abs().max()
    assert err <= 1e-6 * max(float(w.abs().max()), 1e-3)


@settings(max_examples=40, deadline=None)
@given(w=weights, bits=st.sampled_from(BITS), gamma=st.sampled_from([0.0, 0.5, 0.75]),
       target=st.sampled_from([NPU, "arm-cpu-tflite", "arm-cpu-onnx"]))
def test_terms_are_representable_in_the_target_weight_type(w, bits, gamma, target) -> None:
    t = load_target(target)
    t = replace(t, weights=replace(t.weights, bits=tuple(sorted({*t.weights.bits, bits}))))
    spec = term_spec(t, bits, None, layer="l", depthwise=False)
    assert spec.per_channel == ("per-channel" in t.weights.granularity)
    rows = top_rows(torch.rand(w.shape[0]), gamma) if gamma else None
    for k, term in enumerate(expand_weight(w, spec, 3, rows), start=1):
        assert term.qparams.spec == spec
        assert term.codes.dtype == spec.storage_dtype()
        assert term.codes.min() >= spec.qmin and term.codes.max() <= spec.qmax
        assert np.all(term.qparams.zero_point == 0) and np.all(term.qparams.scale > 0)
        if k >= 2 and rows is not None:
            dropped = np.setdiff1d(np.arange(w.shape[0]), rows)
            assert not term.codes[dropped].any()
    if bits == 2:  # ternary
        assert set(np.unique(expand_weight(w, spec, 1)[0].codes)) <= {-1, 0, 1}


def test_order_one_is_plain_ptq() -> None:
    w = torch.randn(16, 8, 3, 3)
    spec = _spec(4, True)
    term = expand_weight(w, spec, 1, method="mse")[0]
    qp = weight_qparams(w, spec, "mse")
    np.testing.assert_array_equal(term.codes, quantize_weight(w, qp))


def test_error_shrinks_by_about_2_to_the_bits_per_order() -> None:
    w = torch.randn(64, 32)
    for bits in (4, 8):
        terms = expand_weight(w, _spec(bits, True), 3, method="minmax")
        e = [float((w.double() - reconstruct(terms[:k])).norm()) for k in (1, 2, 3)]
        assert e[1] < e[0] / 2 ** (bits - 2) and e[2] < e[1] / 2 ** (bits - 2)


def test_sparse_terms_keep_the_largest_residual_rows() -> None:
    w = torch.randn(8, 16)
    w[3] *= 50  # per-tensor scale set by row 3: every other row is coarse, row 3 is not
    assert kept_count(8, 0.75) == 2
    rows = top_rows(torch.tensor([0.0, 5, 1, 0, 9, 0, 0, 0]), 0.75)
    np.testing.assert_array_equal(rows, [1, 4])


# -- bad input -------------------------------------------------------------------------------


def test_bad_input_is_a_user_error() -> None:
    with pytest.raises(UserError, match="order"):
        RExConfig(order=0)
    with pytest.raises(UserError, match="gamma"):
        RExConfig(sparsity=1.0)
    with pytest.raises(UserError, match="gamma"):
        kept_count(8, -0.1)
    with pytest.raises(UserError, match="weight_bits=4 cannot run on npu-int8-per-tensor"):
        term_spec(load_target(NPU), 4, None, layer="l", depthwise=False)
    g, calib = _graph()
    with pytest.raises(UserError, match="weight_bits=3"):
        quantize_rex(g, RExConfig(weight_bits=3), load_target("arm-cpu-tflite"), calib)
    with pytest.raises(UserError, match="budget_macs"):
        quantize_rex(g, RExConfig(budget_macs=-0.1), load_target(NPU), calib)


def test_target_flash_limit() -> None:
    g, calib = _graph()
    t = load_target(NPU)
    plain = sum(n.params["weight"].numel() + 4 * n.params["weight"].shape[0]
                for n in g.nodes if n.op in ("conv2d", "linear"))
    with pytest.raises(UserError, match="no expansion can fit"):
        quantize_rex(g, RExConfig(), replace(t, memory=Memory(model_bytes=plain - 1)), calib)
    with pytest.raises(UserError, match="budget_bytes"):
        quantize_rex(g, RExConfig(), replace(t, memory=Memory(model_bytes=plain + 100)), calib)
    qm = quantize_rex(g, RExConfig(budget_bytes=10**9), replace(
        t, memory=Memory(model_bytes=plain + 300)), calib)
    assert 0 < qm.meta["rex"]["extra_bytes"] <= 300


# -- the graph transform ---------------------------------------------------------------------


def _graph(seed: int = 0) -> tuple[Graph, torch.Tensor]:
    """Inverted residual block + classifier head; depthwise channel ranges 100x apart, as
    folded BatchNorm leaves them in MobileNetV2."""
    gb = GraphBuilder((2, 8, 9, 9), seed=seed)
    e = gb.conv(gb.x, 24, 1, act="relu6", gain=3)
    d = gb.conv(e, 24, 3, groups=24, act="relu6", gain=2)
    p = gb.conv(d, 8, 1)
    y = gb.binary("add", gb.x, p)
    h = gb.conv(y, 32, 1, act="relu6", gain=3)
    pooled = gb.reshape(gb.mean(h, [2, 3]), (-1, 32))
    g = gb.build([gb.linear(pooled, 10)])
    dw = g.node(d)
    gen = torch.Generator().manual_seed(seed + 7)
    gains = torch.exp(torch.rand(24, generator=gen) * np.log(100.0)).reshape(-1, 1, 1, 1)
    dw.params = {**dw.params, "weight": dw.params["weight"] * gains / gains.mean()}
    calib = torch.randn(48, 8, 9, 9, generator=torch.Generator().manual_seed(seed + 1))
    return g, calib


def _choices(g: Graph, order: int, gamma: float, bits: int = 8) -> dict[str, LayerChoice]:
    regions = find_regions(g, {n.name for n in g.nodes if n.op in ("conv2d", "linear")})
    in_region = {n: r for r in regions.values() for n in r.layers}
    out = {}
    for n in g.nodes:
        if n.op not in ("conv2d", "linear"):
            continue
        region = in_region.get(n.name)
        rows = None
        if region is not None and gamma > 0:
            rows = top_rows(torch.rand(g.node(region.head).params["weight"].shape[0],
                                       generator=torch.Generator().manual_seed(3)), gamma)
        terms = expand_weight(n.params["weight"], _spec(bits, True), order, rows)
        out[n.name] = LayerChoice(n.name, order, gamma if rows is not None else 0.0, rows,
                                  terms, rows is not None)
    return out


def test_regions_of_mobilenet_v2() -> None:
    from edgeres.graph.capture import capture
    from edgeres.zoo import create_model

    g = capture(create_model("mobilenet_v2_fmnist"), torch.randn(1, 1, 28, 28))
    regions = find_regions(g, {n.name for n in g.nodes if n.op in ("conv2d", "linear")})
    heads = set(regions)
    consumers = {r.consumer for r in regions.values()}
    assert not heads & consumers
    for b in range(2, 18):  # every expanded block: expand -> depthwise -> project
        r = regions[f"features.{b}.conv.0.0"]
        assert r.depthwise == (f"features.{b}.conv.1.0",)
        assert r.consumer == f"features.{b}.conv.2"
    assert regions["features.0.0"].consumer == "features.1.conv.1"  # stem -> block 1 (t = 1)
    assert regions["features.18.0"].consumer == "classifier.1"  # head -> pool -> classifier
    assert not any(f"features.{b}.conv.2" in heads for b in range(1, 18))


@pytest.mark.parametrize(("order", "gamma"), [(2, 0.0), (2, 0.5), (3, 0.75)])
def test_expanded_graph_computes_the_expanded_weights(order: int, gamma: float) -> None:
    """In float, the rewritten graph equals the original with W := sum of the terms."""
    g, calib = _graph()
    choices = _choices(g, order, gamma)
    biases = {n: g.node(n).params["bias"].double() for n in choices}
    exp = expand_graph(g, choices, find_regions(g, set(choices)), biases)
    ref = g.copy()
    for node in ref.nodes:
        if node.name in choices:
            node.params = {**node.params, "weight": reconstruct(choices[node.name].terms)}
    x = calib[:4].double()
    want = run_graph(ref, x)[g.outputs[0]]
    got = run_graph(exp.graph, x)[g.outputs[0]]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    counts = exp.graph.op_counts()
    if gamma > 0:  # split: two branches of the depthwise conv, the pool, the flatten
        assert counts["mean"] == 2 and counts["reshape"] == 2
        assert "conv2d0.rex2.a" in {n.name for n in exp.graph.nodes}
    else:
        assert {f"conv2d0.rex{k}" for k in range(1, order + 1)} <= {n.name for n in exp.graph.nodes}


def test_split_layout_saves_the_macs_it_promises() -> None:
    g, calib = _graph()
    base = graph_macs(g)
    dense = quantize_rex(g, RExConfig(order=2, sparsity=0.0), load_target(NPU), calib)
    split = quantize_rex(g, RExConfig(order=2, sparsity=0.5), load_target(NPU), calib)
    assert dense.meta["rex"]["extra_macs"] == graph_macs(dense.graph) - base == base
    layers = split.meta["rex"]["layers"]
    want = sum(d["extra_macs"] for d in layers.values())
    assert split.meta["rex"]["extra_macs"] == graph_macs(split.graph) - base == want
    assert layers["conv2d0"]["layout"] == "split" and layers["conv2d0"]["sparsity"] == 0.5
    assert layers["conv2d2"]["layout"] == "dense"  # feeds the residual add: cannot split
    assert split.meta["rex"]["extra_macs"] < 0.75 * base
    json.loads(json.dumps(split.meta))  # the report travels in bundles as JSON


def test_rex_rescues_per_tensor_weights() -> None:
    """On a per-tensor target, order 2 beats per-tensor PTQ and matches per-channel PTQ."""
    g, calib = _graph()
    x = calib[:16].double()
    ref = run_graph(g, x)[g.outputs[0]]

    def weight_sqnr(qm) -> float:  # weights only: activations in float
        return sqnr_db(ref, run_graph(qm.graph, x, None, qm.param_overrides())[g.outputs[0]])

    pt = quantize_graph(g, PTQConfig(), load_target(NPU), calib)
    pc = quantize_graph(g, PTQConfig(), load_target("arm-cpu-tflite"), calib)
    rex = quantize_rex(g, RExConfig(order=2, sparsity=0.0), load_target(NPU), calib)
    assert rex.scheme == "rex"
    assert weight_sqnr(rex) > weight_sqnr(pc) > weight_sqnr(pt) + 6
    assert all(qw.qparams.spec.axis is None for qw in rex.weights.values())
    decisions = {d.subject: d.decision for d in rex.plan.report}
    assert decisions["conv2d1"].startswith("REx K=2")


def test_layer_errors_mark_terms_as_partial() -> None:
    """A REx term alone is far from its layer (the next term cancels its error), so per-layer
    reports must not rank it as the layer; the Add that closes the sum is the layer."""
    g, calib = _graph()
    rex = quantize_rex(g, RExConfig(order=2, sparsity=0.0), load_target(NPU), calib)
    rows = layer_errors(rex, calib[:4])
    partial = {e.layer for e in rows if e.partial}
    assert partial and all(re.search(r"\.rex(\d|_sum|_add\d)", n) for n in partial)
    closing = [e for e in rows if e.layer.endswith("rex_add")]
    assert closing and not any(e.partial for e in closing)
    assert {e.layer for e in rows} - partial >= {n.name for n in g.nodes
                                                if n.op not in ("conv2d", "linear")}


def test_budget_is_respected_and_buys_accuracy() -> None:
    g, calib = _graph()
    t = load_target(NPU)
    errors = []
    for budget in (0.0, 0.05, 0.3, 2.0):
        qm = quantize_rex(g, RExConfig(order=3, budget_macs=budget), t, calib)
        r = qm.meta["rex"]
        assert r["extra_macs"] <= budget * r["base_macs"] + 1e-9
        errors.append(r["error_proxy"])
        if budget == 0.0:
            assert [n.name for n in qm.graph.nodes] == [n.name for n in g.nodes]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 3
    cheap = quantize_rex(g, RExConfig(order=2, budget_macs=0.3), t, calib).meta["rex"]
    assert cheap["layers"]["conv2d1"]["order"] == 2  # the depthwise conv: cheapest, worst


def test_tightened_sums_are_more_accurate() -> None:
    g, calib = _graph()
    t = load_target(NPU)
    choices = _choices(g, 2, 0.0)
    exp = expand_graph(g, choices, {}, {n: g.node(n).params["bias"].double() for n in choices})
    qm = quantize_graph(exp.graph, PTQConfig(), t, calib, weight_overrides=exp.overrides)
    x = calib[:16].double()
    ref = run_graph(exp.graph, x, keep=True)
    before = sqnr_db(ref["conv2d0"], qm.simulate(x, keep=True)["conv2d0"])
    old = float(qm.act_qparams["conv2d0.rex1"].scale)
    assert tighten_sums(qm, exp.sums) > 0
    assert float(qm.act_qparams["conv2d0.rex1"].scale) < old
    assert sqnr_db(ref["conv2d0"], qm.simulate(x, keep=True)["conv2d0"]) > before


# -- deployment: exported files equal the simulation -----------------------------------------


def _codes(qm, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    iq = qm.act_qparams[qm.graph.inputs[0].name]
    codes = iq.quantize(x)
    return codes.numpy(), iq.dequantize(codes)


def _per_op_lsb(qm, tensors: dict[str, np.ndarray]) -> dict[str, int]:
    """Each node re-run on the runtime's own int8 inputs: |runtime - simulation| in LSB.

    Why per op: across a dozen requantizations 1-LSB rounding differences compound, so the
    claim "the runtime computes what the simulation computes" is checked where it is exact.
    """
    from edgeres.graph.ir import OPS

    def ir(name: str) -> np.ndarray:
        v = tensors[name].astype(np.int64)
        return v.transpose(0, 3, 1, 2) if v.ndim == 4 else v

    params = qm.param_overrides()
    out = {}
    for node in qm.graph.nodes:
        qps = [qm.act_qparams[t] for t in (*node.inputs, node.output)]
        xs = [q.dequantize(torch.from_numpy(ir(t))) for q, t in zip(qps, node.inputs, strict=False)]
        p = {k: v.double() for k, v in params.get(node.name, node.params).items()}
        want = qps[-1].quantize(OPS[node.op](node, xs, p)).numpy()
        out[node.name] = int(np.abs(ir(node.output) - want).max())
    return out


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_tflite_export_matches_simulation(tmp_path: Path, gamma: float) -> None:
    from edgeres.export.tflite import export_tflite
    from edgeres.runtime.litert import run_tflite, run_tflite_all_tensors

    g, calib = _graph()
    qm = quantize_rex(g, RExConfig(order=2, sparsity=gamma), load_target(NPU), calib)
    info = export_tflite(qm, tmp_path / "rex.tflite")
    assert not info.float_ops and info.ops["ADD"] >= 4
    oq = qm.act_qparams[g.outputs[0]]
    for i in range(0, 8, 2):  # the graph's batch is 2
        codes, xq = _codes(qm, calib[i : i + 2])
        nhwc = codes.transpose(0, 2, 3, 1).astype(np.int8)
        lsb = _per_op_lsb(qm, run_tflite_all_tensors(info.path, [nhwc], kernels="ref"))
        assert max(lsb.values()) <= 1, lsb
        want = oq.quantize(qm.simulate(xq)[g.outputs[0]]).numpy()
        xnn = run_tflite(info.path, [nhwc], kernels="xnnpack")[0].astype(np.int64)
        assert np.abs(xnn - want).max() <= 3  # end to end: a few 1-LSB steps compound


def test_onnx_export_matches_simulation(tmp_path: Path) -> None:
    from edgeres.export.onnx import export_onnx
    from edgeres.runtime.onnxruntime import run_onnx

    g, calib = _graph()
    qm = quantize_rex(g, RExConfig(order=2, sparsity=0.5), load_target("arm-cpu-onnx"), calib)
    info = export_onnx(qm, tmp_path / "rex.onnx")
    oq = qm.act_qparams[g.outputs[0]]
    for i in range(0, 8, 2):
        _, xq = _codes(qm, calib[i : i + 2])
        want = oq.quantize(qm.simulate(xq)[g.outputs[0]])
        got = run_onnx(info.path, [xq.numpy().astype(np.float32)])[0]
        got_codes = oq.quantize(torch.from_numpy(got).double())
        assert (got_codes - want).abs().max() <= 1
