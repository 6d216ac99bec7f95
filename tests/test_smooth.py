"""Activation smoothing: the float function is unchanged, residual streams are scaled as one
domain, ReLU6 channels only grow within the clip, and per-tensor int8 PTQ gets better."""

from __future__ import annotations

import pytest
import torch
from qmodel_factory import GraphBuilder

from edgeres import create_model
from edgeres.config import PTQConfig
from edgeres.errors import UserError
from edgeres.graph.capture import capture
from edgeres.graph.ir import Graph, run_graph
from edgeres.graph.smooth import RELU6_MARGIN, find_domains, smooth
from edgeres.quant.primitives import sqnr_db
from edgeres.quant.ptq import quantize_graph
from edgeres.targets import load_target

OUTLIERS = (3, 11)  # residual-stream channels made 40x louder than the rest


def _stream(seed: int = 0) -> Graph:
    """stem -> [expand (ReLU6) -> depthwise (ReLU6) -> project] + skip -> head, with two loud
    channels in the residual stream (as MobileNetV2's last stages have)."""
    gb = GraphBuilder((2, 8, 9, 9), seed=seed)
    s0 = gb.conv(gb.x, 16, 1)
    e = gb.conv(s0, 32, 1, act="relu6")
    d = gb.conv(e, 32, 3, groups=32, act="relu6")
    p = gb.conv(d, 16, 1)
    s1 = gb.binary("add", s0, p)
    head = gb.conv(s1, 10, 1)
    g = gb.build([head])
    gain = torch.ones(16)
    gain[list(OUTLIERS)] = 40.0
    for name in (s0, p):
        n = g.node(name)
        n.params = {**n.params, "weight": n.params["weight"] * gain.reshape(-1, 1, 1, 1),
                    "bias": n.params["bias"] * gain}
    return g


def _spread(graph: Graph, tensor: str, x: torch.Tensor) -> float:
    """Widest channel range over the median channel range of ``tensor``."""
    v = run_graph(graph, x, keep=True)[tensor]
    r = v.abs().transpose(0, 1).reshape(v.shape[1], -1).amax(1)
    return float(r.max() / r.median())


def test_residual_stream_is_one_domain() -> None:
    g = _stream()
    domains, skipped = find_domains(g)
    by_tensor = {t: d for d in domains for t in d.tensors}
    stream = by_tensor["add4"]
    assert set(stream.tensors) == {"conv2d0", "conv2d3", "add4"}
    assert [p.name for p in stream.producers] == ["conv2d0", "conv2d3"]
    assert sorted(r.name for r in stream.readers) == ["conv2d1", "conv2d5"]
    assert ("conv2d5", "it is a graph output") in skipped


def test_function_is_unchanged_and_stream_channels_even_out() -> None:
    g = _stream()
    calib = torch.randn(16, 8, 9, 9)
    sm, report = smooth(g, calib, alpha=0.5)
    x = torch.randn(4, 8, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(run_graph(sm, x)["conv2d5"], run_graph(g, x)["conv2d5"],
                               rtol=1e-4, atol=1e-4)
    assert _spread(g, "add4", x) > 20
    assert _spread(sm, "add4", x) < _spread(g, "add4", x) / 4
    stream = next(d for d in report.smoothed if "add4" in d["domain"])
    assert stream["range_after"] < stream["range_before"]
    assert torch.equal(g.node("conv2d0").params["weight"], _stream().node("conv2d0").params[
        "weight"])  # the input graph is untouched


def test_relu6_channels_only_grow_and_stay_below_the_clip() -> None:
    g = _stream()
    calib = torch.randn(16, 8, 9, 9)
    sm, _ = smooth(g, calib, alpha=0.5)
    before = run_graph(g, calib.double(), keep=True)
    after = run_graph(sm, calib.double(), keep=True)
    for t in ("conv2d1", "conv2d2"):  # ReLU6 outputs
        ratio = after[t].abs().amax(dim=(0, 2, 3)) / before[t].abs().amax(dim=(0, 2, 3))
        assert (ratio >= 1 - 1e-6).all()
        grown = ratio > 1 + 1e-6
        assert (after[t].abs().amax(dim=(0, 2, 3))[grown] <= 6 / RELU6_MARGIN + 1e-6).all()
    # inputs far louder than calibration: the clip must still act exactly as before
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64) * 5
    torch.testing.assert_close(run_graph(sm, x)["conv2d5"], run_graph(g, x)["conv2d5"],
                               rtol=1e-4, atol=1e-4)


def test_smoothing_makes_int8_ptq_more_accurate() -> None:
    g = _stream()
    gen = torch.Generator().manual_seed(0)
    calib = torch.randn(64, 8, 9, 9, generator=gen)
    x = torch.randn(16, 8, 9, 9, generator=gen, dtype=torch.float64)
    ref = run_graph(g, x)["conv2d5"]
    target = load_target("arm-cpu-tflite")

    def int8_sqnr(alpha: float) -> float:
        qm = quantize_graph(g, PTQConfig(smooth_alpha=alpha), target, calib)
        return sqnr_db(ref, qm.simulate(x)["conv2d5"])

    plain, smoothed = int8_sqnr(0.0), int8_sqnr(0.5)
    assert smoothed > plain + 3, (plain, smoothed)  # 23.0 -> 26.9 dB when written


def test_mobilenet_v2_function_is_unchanged() -> None:
    """On images it was not calibrated on."""
    from edgeres.data.specs import load_spec
    from edgeres.zoo import get_entry

    pre = get_entry("mobilenet_v2_fmnist").preprocess
    net = create_model("mobilenet_v2_fmnist", pretrained=True).eval()
    calib = load_spec("fmnist:train@64", pre, 1, 28).x
    g = capture(net, calib[:1])
    sm, report = smooth(g, calib)
    assert any(len(d["domain"]) > 1 for d in report.smoothed)  # a residual stage was found
    assert any("mean" in why for _, why in report.skipped)  # the pooled tensor was not
    x = load_spec("fmnist:test@64", pre, 1, 28).x.double()
    out = g.outputs[0]
    # A grown ReLU6 channel clips an input 1.5x louder than any calibration image: 73 dB here,
    # far above what int8 keeps (30 dB), but not the float-rounding 130 dB of unclipped data.
    assert sqnr_db(run_graph(g, x)[out], run_graph(sm, x)[out]) > 60


def test_bad_alpha_and_rex_combination_are_user_errors() -> None:
    with pytest.raises(UserError, match="smooth_alpha"):
        PTQConfig(smooth_alpha=1.0)
    g = _stream()
    qm = quantize_graph(g, PTQConfig(), load_target("arm-cpu-tflite"), torch.randn(4, 8, 9, 9))
    with pytest.raises(UserError, match="REx"):
        quantize_graph(g, PTQConfig(smooth_alpha=0.5), load_target("arm-cpu-tflite"),
                       torch.randn(4, 8, 9, 9), weight_overrides={"conv2d0": qm.weights["conv2d0"]})


def test_per_tensor_layers_keep_their_weight_range() -> None:
    """With one weight scale per layer, growing a quiet channel whose weights are the layer's
    widest would coarsen the whole layer: per-tensor layers do not let that happen."""
    gb = GraphBuilder((2, 8, 9, 9), seed=0)
    a = gb.conv(gb.x, 16, 1, act="relu")
    b = gb.conv(a, 16, 3, groups=16, act="relu")
    c = gb.conv(b, 4, 1)
    g = gb.build([c])
    calib = torch.randn(16, 8, 9, 9, generator=torch.Generator().manual_seed(0))
    n = g.node(a)  # channel 0: the widest weights, but a bias that keeps its output quiet
    w, bias = n.params["weight"].clone(), n.params["bias"].clone()
    w[0] *= 6.0
    n.params = {"weight": w, "bias": bias}
    peaks = run_graph(g, calib, keep=True)[a].amax(dim=(0, 2, 3))
    pre0 = torch.einsum("nchw,c->nhw", calib.double(), w[0, :, 0, 0].double()) + bias[0]
    bias[0] -= float(pre0.max() - peaks[1:].median() / 4)  # peak at 1/4 of the others'
    n.params = {"weight": w, "bias": bias}
    widest = float(w.abs().max())
    free, _ = smooth(g, calib, alpha=0.5)
    bounded, _ = smooth(g, calib, alpha=0.5, per_tensor=[a, b, c])
    assert float(free.node(a).params["weight"].abs().max()) > widest * 1.5  # per-channel: fine
    for name in (a, b, c):
        before = float(g.node(name).params["weight"].abs().max())
        assert float(bounded.node(name).params["weight"].abs().max()) <= before * (1 + 1e-5)
    x = torch.randn(4, 8, 9, 9, dtype=torch.float64)
    out = g.outputs[0]
    torch.testing.assert_close(run_graph(bounded, x)[out], run_graph(g, x)[out],
                               rtol=1e-4, atol=1e-4)


def test_one_pass_statistics_equal_a_pass_over_the_smoothed_graph() -> None:
    """PTQ with smoothing calibrates once: the smoothed tensors' statistics are derived from
    the unsmoothed pass (channel ranges, each sample's channel). The reference observes the
    smoothed graph directly; they may differ only by float rounding."""
    from edgeres.quant.plan import make_plan
    from edgeres.quant.ptq import _smoothed_stats, collect_stats

    torch.manual_seed(0)
    net = create_model("mobilenet_v2_fmnist", pretrained=True).eval()
    calib = torch.randn(96, 1, 28, 28)
    g = capture(net, calib[:1])
    cfg = PTQConfig(smooth_alpha=0.5)
    plan = make_plan(g, load_target("arm-cpu-tflite"), 8, 8, None, ())
    one_graph, one, _ = _smoothed_stats(g, plan, calib, cfg, False)
    two_graph, _ = smooth(g, calib, 0.5, cfg.calib_batch)
    two = collect_stats(two_graph, plan, calib, cfg)
    for n1, n2 in zip(one_graph.nodes, two_graph.nodes, strict=True):
        for k in n1.params:
            assert torch.equal(n1.params[k], n2.params[k]), (n1.name, k)
    rescaled = 0
    for t in plan.act_specs:
        a, b = one[t], two[t]
        width = b.hi - b.lo
        assert abs(a.lo - b.lo) <= 1e-5 * width and abs(a.hi - b.hi) <= 1e-5 * width, t
        assert a.hist is not None and b.hist is not None
        assert abs(a.hist - b.hist).sum() <= 1e-3 * b.hist.sum(), t  # a few values per bin edge
        if b.channel_sum is not None:
            torch.testing.assert_close(a.channel_sum, b.channel_sum, rtol=1e-4, atol=1e-3)
        rescaled += t in {x for d in find_domains(g)[0] for x in d.tensors}
    assert rescaled > 10  # the residual streams and conv outputs of the whole network


@pytest.mark.parametrize("target, cfg, alpha", [
    ("arm-cpu-tflite", PTQConfig(), 0.5),  # W8A8, per-channel weights: on by default
    ("arm-cpu-onnx", PTQConfig(), 0.5),
    ("arm-cpu-tflite", PTQConfig(smooth_alpha=0.0), 0.0),  # asked off
    ("npu-int8-per-tensor", PTQConfig(), 0.0),  # per-tensor weights: off (it can cost dB)
    ("arm-cpu-onnx", PTQConfig(weight_bits=4), 0.0),  # W4: not measured with it
    ("arm-cpu-tflite", PTQConfig(adaround_iters=2), 0.0),
    ("npu-int8-per-tensor", PTQConfig(smooth_alpha=0.3), 0.3),  # asked on
])
def test_default_smoothing_follows_the_plan(target: str, cfg: PTQConfig, alpha: float) -> None:
    """The report records the alpha used, and the smoothed model is the one measured."""
    g = _stream()
    calib = torch.randn(32, 8, 9, 9, generator=torch.Generator().manual_seed(0))
    qm = quantize_graph(g, cfg, load_target(target), calib)
    assert qm.meta["config"]["smooth_alpha"] == alpha
    assert ("smooth" in qm.meta) == (alpha > 0)
    said = [d for d in qm.meta["plan"]["report"] if d["subject"] == "activations"]
    assert len(said) == (alpha > 0) and all(str(alpha) in d["decision"] for d in said)
    if alpha > 0:
        assert not torch.equal(qm.graph.node(g.nodes[0].name).params["weight"],
                               g.nodes[0].params["weight"])


def test_rex_terms_are_expanded_from_unsmoothed_weights() -> None:
    from edgeres.config import RExConfig
    from edgeres.graph.rex_expand import quantize_rex

    g = _stream()
    calib = torch.randn(32, 8, 9, 9, generator=torch.Generator().manual_seed(0))
    qm = quantize_rex(g, RExConfig(order=2, sparsity=0.5, weight_bits=8),
                      load_target("arm-cpu-tflite"), calib)
    assert qm.meta["config"]["ptq"]["smooth_alpha"] == 0.0 and "smooth" not in qm.meta
