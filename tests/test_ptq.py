"""PTQ: plans honour targets and say why; calibration and bias correction behave; bad data fails."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from edgeres.config import PTQConfig
from edgeres.errors import UserError
from edgeres.graph.capture import capture
from edgeres.graph.ir import run_graph
from edgeres.quant.observers import TensorStats, choose_range
from edgeres.quant.plan import make_plan
from edgeres.quant.primitives import sqnr_db
from edgeres.quant.ptq import layer_errors, quantize_graph
from edgeres.targets import load_target
from edgeres.zoo import create_model


@pytest.fixture(scope="module")
def mnv2():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2_fmnist")
    # random-init BN stats make every layer the same; give them real-looking spread
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(48, 1, 28, 28)
    return capture(model, x[:1]), x


def test_per_tensor_target_says_why(mnv2) -> None:
    graph, _ = mnv2
    plan = make_plan(graph, load_target("npu-int8-per-tensor"))
    dw = "features.2.conv.1.0"
    assert plan.weight_specs[dw].axis is None
    reasons = {d.subject: d.reason for d in plan.report}
    assert "depthwise per-channel not supported on npu-int8-per-tensor" in reasons[dw]
    per_channel = make_plan(graph, load_target("arm-cpu-tflite"))
    assert per_channel.weight_specs[dw].axis == 0


def test_bits_the_target_lacks_fail_clearly(mnv2) -> None:
    graph, _ = mnv2
    with pytest.raises(UserError, match="w4 not supported by npu-int8-per-tensor"):
        make_plan(graph, load_target("npu-int8-per-tensor"), weight_bits=4)


def test_per_channel_asked_of_a_per_tensor_target_is_refused(mnv2) -> None:
    graph, _ = mnv2
    npu = load_target("npu-int8-per-tensor")
    with pytest.raises(UserError, match=r"npu-int8-per-tensor cannot quantize features.0.0 "
                                        r"per-channel \(allowed: per-tensor\)"):
        make_plan(graph, npu, per_channel=True)
    assert make_plan(graph, npu).weight_specs["features.0.0"].axis is None  # the default


def test_ignore_list_keeps_layers_float(mnv2) -> None:
    graph, x = mnv2
    qm = quantize_graph(
        graph, PTQConfig(ignore=("features.1.*",)), load_target("arm-cpu-tflite"), x
    )
    assert {"features.1.conv.0.0", "features.1.conv.1"} <= set(qm.meta["plan"]["float_nodes"])
    assert "features.1.conv.1" not in qm.weights
    with pytest.raises(UserError, match="match no layer"):
        quantize_graph(graph, PTQConfig(ignore=("nope.*",)), load_target("arm-cpu-tflite"), x)


def test_simulation_tracks_float_and_reshape_shares_qparams(mnv2) -> None:
    graph, x = mnv2
    qm = quantize_graph(graph, PTQConfig(), load_target("arm-cpu-tflite"), x)
    ref = run_graph(graph, x[:8])["logits"]
    sim = qm.simulate(x[:8])["logits"]
    assert sqnr_db(ref, sim) > 15
    reshape = next(n for n in graph.nodes if n.op == "reshape")
    assert qm.act_qparams[reshape.output] == qm.act_qparams[reshape.inputs[0]]
    # bias codes sit exactly on the input x weight scale grid
    qw = qm.weights["features.0.0"]
    assert qw.bias_codes.dtype == np.int32
    expected = qm.act_qparams["input"].scale * qw.qparams.scale
    assert np.array_equal(qw.bias_qparams.scale, expected.astype(np.float32))
    names = [e.layer for e in layer_errors(qm, x[:2])]
    assert names == [t.name for t in graph.inputs] + [n.name for n in graph.nodes]


def test_local_sqnr_is_the_layer_quantized_alone(mnv2) -> None:
    """A layer's local SQNR is the simulation's at that layer when only its inputs' rounding,
    its weights and its output are quantized, against only its inputs' rounding: it never
    counts what came before, and a reshape (same grid in and out) adds nothing."""
    graph, x = mnv2
    qm = quantize_graph(graph, PTQConfig(), load_target("arm-cpu-tflite"), x)
    rows = {e.layer: e for e in layer_errors(qm, x[:4])}
    for name in ("features.0.0", "features.3.conv.1.0", "classifier.1"):  # one input each
        node = qm.graph.node(name)  # qm.graph: smoothed by default
        inputs = {i: qm.act_qparams[i] for i in node.inputs}
        before = replace(qm, act_qparams=inputs, weights={})
        alone = replace(qm, act_qparams={**inputs, node.output: qm.act_qparams[node.output]},
                        weights={k: v for k, v in qm.weights.items() if k == name})
        expected = sqnr_db(before.simulate(x[:4], keep=True)[node.output],
                           alone.simulate(x[:4], keep=True)[node.output])
        assert rows[name].local_sqnr_db == pytest.approx(expected, abs=1e-9), name
        assert rows[name].local_sqnr_db > rows[name].sqnr_db, name  # upstream error excluded
    add = qm.graph.node("features.3.add")  # two inputs, each the float value rounded once
    ref = run_graph(qm.graph, x[:4], keep=True)
    a, b = (qm.act_qparams[i].fake_quantize(ref[i]) for i in add.inputs)
    assert rows[add.name].local_sqnr_db == pytest.approx(
        sqnr_db(a + b, qm.act_qparams[add.output].fake_quantize(a + b)), abs=1e-9)
    assert rows["reshape"].local_sqnr_db == float("inf") > rows["reshape"].sqnr_db
    assert rows["input"].local_sqnr_db == rows["input"].sqnr_db


def test_layer_errors_say_where_the_range_clips(mnv2) -> None:
    """Scored on the calibration inputs themselves, min-max ranges clip nothing; a 99th
    percentile clips about 1 % of some tensor's values."""
    graph, x = mnv2
    target = load_target("arm-cpu-tflite")
    full = layer_errors(quantize_graph(graph, PTQConfig(act_observer="minmax"), target, x), x)
    assert all(e.clipped_pct in (None, 0.0) for e in full)
    assert sum(e.clipped_pct is not None for e in full) > 10
    cut = layer_errors(quantize_graph(graph, PTQConfig(act_observer="percentile",
                                                       percentile=99.0), target, x), x)
    worst = max(cut, key=lambda e: e.clipped_pct or 0.0)
    assert 0.2 < worst.clipped_pct < 5.0


@pytest.mark.parametrize("observer", ["percentile", "mse", "entropy"])
def test_model_input_is_never_clipped(mnv2, observer) -> None:
    """Whatever the observer does inside the network, the model input keeps its calibration
    min-max: a clipped pixel is lost to every later layer."""
    graph, x = mnv2
    qm = quantize_graph(graph, PTQConfig(act_observer=observer, percentile=99.0),
                        load_target("arm-cpu-tflite"), x)
    errors = {e.layer: e for e in layer_errors(qm, x)}
    assert errors["input"].clipped_pct == 0.0
    assert max(e.clipped_pct or 0.0 for e in errors.values()) > 0.01  # others still clip


def test_bias_correction_removes_mean_shift(mnv2) -> None:
    graph, x = mnv2
    target = load_target("npu-int8-per-tensor")  # per-tensor: large weight error to correct
    ref = run_graph(graph, x[:16], keep=True)
    shifts = {}
    for bc in (False, True):
        qm = quantize_graph(graph, PTQConfig(bias_correction=bc, act_observer="minmax"), target, x)
        sim = qm.simulate(x[:16], keep=True)
        t = "features.2.conv.1.0"
        shifts[bc] = float((sim[t] - ref[t]).mean(dim=(0, 2, 3)).abs().mean())
    assert shifts[True] < shifts[False]


def test_observers_order() -> None:
    s = TensorStats()
    x = torch.cat([torch.randn(100_000), torch.tensor([40.0])])
    s.update_range(x)
    s.update_hist(x)
    lo_mm, hi_mm = choose_range(s, "minmax", 256, 99.99)
    assert (lo_mm, hi_mm) == (float(x.min()), 40.0)
    for method in ("percentile", "mse", "entropy"):
        lo, hi = choose_range(s, method, 256, 99.99)
        assert lo <= 0 <= hi and hi < hi_mm, method  # outlier clipped


def test_model_output_is_never_clipped(mnv2) -> None:
    """The logits' range is min-max x headroom: no calibration input saturates an output
    code (a clipped top logit would tie with the others), and the headroom is applied."""
    graph, x = mnv2
    out = graph.outputs[0]
    ref = run_graph(graph, x)[out]
    target = load_target("arm-cpu-tflite")
    for headroom in (1.0, 1.5):
        qm = quantize_graph(graph, PTQConfig(output_headroom=headroom), target, x)
        qp = qm.act_qparams[out]
        top = float(qp.dequantize(torch.tensor(qp.spec.qmax)))
        bottom = float(qp.dequantize(torch.tensor(qp.spec.qmin)))
        step = float(qp.scale)
        assert top >= headroom * float(ref.max()) - step
        assert bottom <= headroom * float(ref.min()) + step
        if headroom > 1.0:  # at 1.0 the maximum itself lands on the top code
            assert (qm.simulate(x)[out] < top).all()  # nothing saturates
    with pytest.raises(UserError, match="output_headroom"):
        PTQConfig(output_headroom=0.5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(0, 1, 28, 28), "empty"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN or Inf"),
        (torch.zeros(2, 3, 28, 28), r"expects \[N, 1, 28, 28\]"),
        (torch.zeros(2, 1, 32, 32), "channels and image size"),
    ],
)
def test_bad_calibration_data(mnv2, bad, match) -> None:
    graph, _ = mnv2
    with pytest.raises(UserError, match=match):
        quantize_graph(graph, PTQConfig(), load_target("arm-cpu-tflite"), bad)


def test_config_json_roundtrip_and_validation() -> None:
    cfg = PTQConfig(weight_bits=4, ignore=("a.*",))
    assert PTQConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(UserError, match="act_observer"):
        PTQConfig(act_observer="magic")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="unknown field"):
        PTQConfig.from_json({"wieght_bits": 8})


def test_output_bias_correction_on_real_data() -> None:
    """The trained EMO on Fashion-MNIST: the classifier's bias takes out the mean logit error
    of the integer network on the calibration images, only the output layer's bias moves,
    and the per-class mean error on held-out test images shrinks too."""
    from edgeres.data.specs import load_spec
    from edgeres.zoo import get_entry

    entry = get_entry("emo_1m_fmnist")
    calib = load_spec("fmnist:train@128", entry.preprocess, entry.in_chans, entry.img_size).x
    held_out = load_spec("fmnist:test@500", entry.preprocess, entry.in_chans,
                         entry.img_size).x
    graph = capture(create_model("emo_1m_fmnist", pretrained=True).eval(), calib[:1])
    target = load_target("arm-cpu-tflite")
    plain = quantize_graph(graph, PTQConfig(), target, calib)
    fixed = quantize_graph(graph, PTQConfig(output_bias_correction=True), target, calib)
    head = fixed.meta["output_bias_correction"]["layer"]
    moved = [n for n in plain.weights
             if not np.array_equal(plain.weights[n].bias_codes, fixed.weights[n].bias_codes)]
    assert moved == [head]
    out = graph.outputs[0]

    def mean_err(qm, x):  # noqa: ANN001
        return (qm.simulate(x)[out] - run_graph(graph, x)[out]).mean(dim=0)

    step = float(fixed.weights[head].bias_qparams.scale.max())
    before, after = mean_err(plain, calib), mean_err(fixed, calib)
    assert float(before.abs().max()) > 4 * step  # there was a shift to correct
    # output rounding (one output step) still adds a little, far below the shift removed
    assert float(after.abs().max()) < 0.25 * float(before.abs().max())
    # held-out test images: the per-class offset was the network's, not the calibration set's
    held_before, held_after = mean_err(plain, held_out), mean_err(fixed, held_out)
    assert float(held_after.abs().mean()) < 0.7 * float(held_before.abs().mean())


def test_output_bias_correction_reads_the_float_mean_from_calibration() -> None:
    """The calibration pass measures the float output's mean, so the correction needs no
    float pass of its own: same bias codes as measuring it again (unsmoothed plan, where
    the float graph the two passes run is the same)."""
    from edgeres.data.specs import load_spec
    from edgeres.quant.ptq import correct_output_bias
    from edgeres.quant.qmodel import QModel
    from edgeres.zoo import get_entry

    entry = get_entry("mobilenet_v2_fmnist")
    calib = load_spec("fmnist:train@64", entry.preprocess, entry.in_chans, entry.img_size).x
    graph = capture(create_model("mobilenet_v2_fmnist", pretrained=True).eval(), calib[:1])
    cfg, target = PTQConfig(smooth_alpha=0.0), load_target("arm-cpu-tflite")
    plain = quantize_graph(graph, cfg, target, calib)
    fixed = quantize_graph(graph, replace(cfg, output_bias_correction=True), target, calib)
    again = QModel(plain.graph, plain.act_qparams, dict(plain.weights))
    head = correct_output_bias(again, calib, cfg.calib_batch)["layer"]  # its own float pass
    assert not np.array_equal(again.weights[head].bias_codes, plain.weights[head].bias_codes)
    np.testing.assert_array_equal(again.weights[head].bias_codes,
                                  fixed.weights[head].bias_codes)
