"""QAT: the brevitas network computes the QModel it is read back into, the QModel's exports
compute it too, resume is exact, and bad input is refused before anything is written.

Oracles: ``QModel.simulate`` (float64 over the exact integers), LiteRT's reference kernels and
ONNX Runtime on the exported files, an uninterrupted run for resume, torch's own
``cross_entropy`` / ``kl_div`` for the distillation loss.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qmodel_factory import (
    GraphBuilder,
    calibration_inputs,
    quantize_minmax,
    random_codes,
    simulate_codes,
)
from torch import nn

from edgeres.config import QATConfig, RExConfig
from edgeres.data.specs import DataSet
from edgeres.errors import UserError
from edgeres.graph.capture import capture
from edgeres.graph.ir import run_graph
from edgeres.qtypes import QParams, QSpec, bias_qparams
from edgeres.quant.primitives import qparams_from_range, quantize_weight, weight_qparams
from edgeres.quant.qat import QATNet, qat_to_qmodel
from edgeres.quant.qat_train import CHECKPOINT_NAME, distill_loss, init_net, run_qat
from edgeres.quant.qmodel import QModel, QuantWeight
from edgeres.targets import load_target

CFG = QATConfig(epochs=2, batch=32, lr=0.02, seed=3)


class TinyNet(nn.Module):
    """Stem, one MobileNetV2 inverted residual block (expand, depthwise, project, + input),
    pool and classifier: every op kind QAT meets in the zoo's models, in a 1 ms forward."""

    def __init__(self, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1), nn.BatchNorm2d(24), nn.ReLU6())
        self.dw = nn.Sequential(
            nn.Conv2d(24, 24, 3, 1, 1, groups=24), nn.BatchNorm2d(24), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1), nn.BatchNorm2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():  # BatchNorm statistics that are not the identity
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_data(model: nn.Module, n: int = 224, seed: int = 1) -> tuple[DataSet, DataSet]:
    """Random images labelled by a noisy teacher: accuracy is neither 0 nor trivially 100."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=gen)
    with torch.no_grad():
        logits = model(x) + 0.3 * torch.randn(n, 4, generator=gen)
    y = logits.argmax(1)
    return DataSet(x[:192], y[:192], "tiny:train"), DataSet(x[192:], y[192:], "tiny:val")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# -- the adapter: QModel -> brevitas network -> QModel --------------------------------------


def _block_qmodel() -> tuple[QModel, str]:
    gb = GraphBuilder((4, 8, 9, 9))
    e = gb.conv(gb.x, 32, 1, act="relu6", gain=4)
    d = gb.conv(e, 32, 3, 1, groups=32, act="relu6", gain=2)
    a = gb.binary("add", gb.x, gb.conv(d, 8, 1))
    r = gb.reshape(gb.mean(a, [2, 3], keepdims=True), (4, 8))
    y = gb.softmax(gb.linear(r, 10))
    return quantize_minmax(gb.build([y])), y


def test_qatnet_computes_the_qmodel_and_reads_back_the_same_numbers():
    qm, out = _block_qmodel()
    net = QATNet(qm)
    codes = random_codes(qm)
    x = qm.act_qparams["x"].dequantize(torch.from_numpy(codes["x"].astype(np.int64)))
    got = net.run(x)[out].int().numpy().astype(np.int64)
    want = simulate_codes(qm, codes)[out]
    assert np.abs(got - want).max() <= 1
    back = qat_to_qmodel(net)
    assert back.act_qparams == qm.act_qparams  # scales bit for bit, zero points, specs
    for name, qw in qm.weights.items():
        np.testing.assert_array_equal(back.weights[name].codes, qw.codes)
        assert back.weights[name].qparams == qw.qparams
        np.testing.assert_array_equal(back.weights[name].bias_codes, qw.bias_codes)
    assert back.scheme == "qat"


def _one_conv(wspec: QSpec, aspec: QSpec) -> tuple[QModel, str]:
    gb = GraphBuilder((2, 6, 7, 7), seed=4)
    y = gb.conv(gb.x, 8, 3, stride=2, padding=(0, 1, 2, 1), act="relu")
    graph = gb.build([y])
    x = calibration_inputs(graph, 1)[0]["x"]
    ref = run_graph(graph, x, keep=True)
    act = {t: qparams_from_range(aspec, float(ref[t].min()), float(ref[t].max()))
           for t in ("x", y)}
    node = graph.node(y)
    wqp = weight_qparams(node.params["weight"], wspec)
    qw = QuantWeight(quantize_weight(node.params["weight"], wqp), wqp)
    bqp = bias_qparams(act["x"], wqp)
    qw.bias_codes = np.round(node.params["bias"].double().numpy() / bqp.scale).astype(np.int32)
    qw.bias_qparams = bqp
    return QModel(graph, act, {y: qw}), y


@pytest.mark.parametrize("bits,narrow,axis", [(8, True, 0), (8, False, None), (4, True, 0),
                                              (3, False, 0), (2, True, None)])
@pytest.mark.parametrize("act", [QSpec(8, True, False), QSpec(8, False, False),
                                 QSpec(8, True, True), QSpec(16, False, False)])
def test_every_weight_and_activation_format_round_trips(bits, narrow, axis, act):
    qm, y = _one_conv(QSpec(bits, True, True, axis, narrow), act)
    net = QATNet(qm)
    back = qat_to_qmodel(net)
    assert back.act_qparams == qm.act_qparams
    assert back.weights[y].qparams == qm.weights[y].qparams
    np.testing.assert_array_equal(back.weights[y].codes, qm.weights[y].codes)
    np.testing.assert_array_equal(back.weights[y].bias_codes, qm.weights[y].bias_codes)
    x = torch.randn(2, 6, 7, 7, generator=torch.Generator().manual_seed(5))
    got = net.run(x)[y].int().numpy().astype(np.int64)
    want = qm.act_qparams[y].quantize(qm.simulate(x)[y]).numpy()
    assert np.abs(got - want).max() <= 1


def test_unsigned_symmetric_activations_are_refused():
    qm, _ = _one_conv(QSpec(8, True, True, 0, True), QSpec(8, False, True))
    with pytest.raises(UserError, match="unsigned symmetric"):
        QATNet(qm)


def test_relu6_stays_relu6():
    """With an output grid reaching 12, ReLU would pass values above 6; ReLU6 must clip."""
    gb = GraphBuilder((2, 8, 6, 6))
    y = gb.conv(gb.x, 16, 3, act="relu6", gain=12)
    qm = quantize_minmax(gb.build([y]))
    spec = qm.act_qparams[y].spec
    lsb = 12.0 / 255
    qm.act_qparams[y] = QParams(spec, np.float32(lsb), np.int64(spec.qmin))
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(0)) * 3
    got = QATNet(qm).run(x)[y].value.detach().double()
    want = qm.simulate(x)[y]
    assert torch.allclose(got, want, atol=lsb * 1.01)
    assert float(got.max()) <= 6.0 + lsb
    linear = quantize_minmax(gb.build([y]))  # the same conv without its activation
    linear.graph.node(y).attrs["act"] = "none"
    linear.act_qparams, linear.weights = qm.act_qparams, qm.weights
    assert float(linear.simulate(x)[y].max()) > 6.5  # so a ReLU would have gone past 6


def test_fixed_output_qparams_are_not_trained():
    qm, out = _block_qmodel()
    net = QATNet(qm)
    key = net.act_key[out]
    assert all(not p.requires_grad for p in net.acts[key].parameters())
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert len(trainable) > 2 * len(qm.weights)  # weights, biases, weight and act scales


# -- the distillation loss ------------------------------------------------------------------


def test_distill_loss_against_torch():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    y = torch.randint(0, 5, (6,), generator=gen)
    cfg = QATConfig(distill_temperature=3.0, distill_alpha=0.25)
    kd = F.kl_div(F.log_softmax(s / 3, -1), F.softmax(t / 3, -1), reduction="batchmean") * 9
    want = 0.25 * kd + 0.75 * F.cross_entropy(s, y)
    assert torch.allclose(distill_loss(s, t, y, cfg), want, atol=1e-6)
    assert float(distill_loss(t, t, None, cfg)) == pytest.approx(0.0, abs=1e-6)
    cfg0 = replace(cfg, distill_alpha=0.0)
    assert torch.allclose(distill_loss(s, t, y, cfg0), F.cross_entropy(s, y), atol=1e-6)


# -- run_qat end to end: exports compute what the brevitas network computes -----------------


@pytest.mark.parametrize("target,bits,rex", [
    ("arm-cpu-tflite", 8, None),
    ("arm-cpu-onnx", 4, None),
    ("npu-int8-per-tensor", 8, RExConfig(order=2, sparsity=0.5)),  # REx + QAT
])
def test_run_qat_exports_match_simulation_and_brevitas(tmp_path, target, bits, rex):
    model = TinyNet()
    train, val = tiny_data(model)
    cfg = replace(CFG, weight_bits=bits, epochs=1)
    res = run_qat(model, load_target(target), cfg, train, val, tmp_path, progress=False,
                  rex=rex)
    qm = res.qmodel
    assert qm.scheme == ("qat" if rex is None else "rex+qat") and res.start_scheme == (
        "ptq" if rex is None else "rex")
    if rex is not None:  # the expanded terms were trained as layers of their own
        assert sum(".rex2" in n for n in qm.weights) >= 3
    assert res.steps == 6 and res.epochs == 1.0 and res.checkpoint == tmp_path / CHECKPOINT_NAME
    assert {qw.qparams.spec.bits for qw in qm.weights.values()} == {bits}
    assert all(qw.codes.min() >= -(2 ** (bits - 1)) + 1 for qw in qm.weights.values())
    assert 0.0 <= res.qat_acc <= 100.0 and res.float_acc > 50.0
    # training moved the learned scales away from the PTQ start
    _, ptq = init_net(capture(model, train.x[:1]), load_target(target), cfg, train, rex)
    assert qm.act_qparams.keys() == ptq.act_qparams.keys()
    assert any(qm.act_qparams[t] != ptq.act_qparams[t] for t in qm.act_qparams)

    qp_in, qp_out = qm.act_qparams["input"], qm.act_qparams["logits"]
    codes = qp_in.quantize(val.x).numpy()
    sim = simulate_codes(qm, {"input": codes})["logits"]
    x = qp_in.dequantize(torch.from_numpy(codes))
    brevitas = res.net.run(x)["logits"].int().numpy().astype(np.int64)
    assert np.abs(brevitas - sim).max() <= 1
    if target != "arm-cpu-onnx":
        from edgeres.export.tflite import export_tflite
        from edgeres.runtime.litert import run_tflite

        export_tflite(qm, tmp_path / "m.tflite")
        nhwc = codes.astype(np.int8).transpose(0, 2, 3, 1)
        got = run_tflite(tmp_path / "m.tflite", [nhwc], kernels="ref")[0].astype(np.int64)
        assert np.abs(got - sim).max() <= 1
    else:
        from edgeres.export.onnx import export_onnx
        from edgeres.runtime.onnxruntime import run_onnx

        export_onnx(qm, tmp_path / "m.onnx")
        got = run_onnx(tmp_path / "m.onnx", [x.numpy().astype(np.float32)])[0]
        want = qp_out.dequantize(torch.from_numpy(sim)).numpy()
        assert np.abs(got - want).max() <= float(qp_out.scale) * 1.001


def test_steps_cap_and_resume_equal_an_uninterrupted_run(tmp_path):
    model = TinyNet()
    train, val = tiny_data(model)
    target = load_target("arm-cpu-tflite")
    full = run_qat(model, target, CFG, train, val, tmp_path / "full", progress=False)
    part = run_qat(model, target, replace(CFG, steps=5), train, val, tmp_path / "part",
                   progress=False)
    assert part.steps == 5 and part.epochs == pytest.approx(5 / 6)
    resumed = run_qat(model, target, CFG, train, val, tmp_path / "part",
                      resume=part.checkpoint, progress=False)
    assert resumed.steps == full.steps == 12
    a, b = _state(full.net), _state(resumed.net)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    assert any(not torch.equal(a[k], v) for k, v in _state(part.net).items())
    assert resumed.history[-1]["val_acc"] == full.history[-1]["val_acc"]
    # a finished run resumed again trains nothing and gives the same model
    again = run_qat(model, target, CFG, train, val, tmp_path / "part",
                    resume=resumed.checkpoint, progress=False)
    assert again.steps == 12
    assert all(torch.equal(v, _state(again.net)[k]) for k, v in b.items())
    # the checkpoint folder a run wrote resumes as its checkpoint does
    folder = run_qat(model, target, CFG, train, val, tmp_path / "part",
                     resume=tmp_path / "part", progress=False)
    assert folder.steps == 12
    assert all(torch.equal(v, _state(folder.net)[k]) for k, v in b.items())


# -- bad input: clear errors, nothing overwritten -------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, TinyNet, DataSet, DataSet]:
    out = tmp_path_factory.mktemp("qat_done")
    model = TinyNet()
    train, val = tiny_data(model)
    run_qat(model, load_target("arm-cpu-tflite"), replace(CFG, steps=2), train, val, out,
            progress=False)
    return out / CHECKPOINT_NAME, model, train, val


def _refused(tmp_path: Path, kept: Path, match: str, model: nn.Module, train: DataSet,
             val: DataSet, target: str = "arm-cpu-tflite", cfg: QATConfig = CFG,
             out: Path | None = None, resume: Path | None = None) -> None:
    """run_qat raises a UserError matching ``match``; ``kept`` and the output dir are untouched."""
    before = _sha(kept)
    with pytest.raises(UserError, match=match):
        run_qat(model, load_target(target), replace(cfg, steps=2), train, val,
                out or tmp_path / "new", resume=resume, progress=False)
    assert _sha(kept) == before
    assert not (tmp_path / "new").exists()


def test_resume_from_another_model_is_refused(tmp_path, finished):
    ckpt, _, train, val = finished
    _refused(tmp_path, ckpt, "another run.*model", model=TinyNet(seed=7), train=train,
             val=val, resume=ckpt)


def test_resume_with_another_config_or_target_is_refused(tmp_path, finished):
    ckpt, model, train, val = finished
    _refused(tmp_path, ckpt, "config lr", model=model, train=train, val=val, resume=ckpt,
             cfg=replace(CFG, lr=0.5))
    _refused(tmp_path, ckpt, "target", model=model, train=train, val=val, resume=ckpt,
             target="cortex-m7")


def test_out_dir_with_another_runs_checkpoint_is_refused(tmp_path, finished):
    ckpt, _, train, val = finished
    _refused(tmp_path, ckpt, "another QAT run", model=TinyNet(seed=7), train=train, val=val,
             out=ckpt.parent)


def test_not_a_checkpoint_is_refused(tmp_path, finished):
    _, model, train, val = finished
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.zeros(2)}, bogus)
    _refused(tmp_path, bogus, "not an edgeres QAT checkpoint", model=model, train=train,
             val=val, resume=bogus)


def test_dataset_with_other_classes_is_refused(tmp_path, finished):
    ckpt, model, train, val = finished
    ten = DataSet(train.x, train.y * 3, "ten-classes")  # labels 0..9, the model has 4 outputs
    _refused(tmp_path, ckpt, "4 outputs", model=model, train=ten, val=val)
    wrong = DataSet(torch.zeros(64, 3, 12, 12), train.y[:64], "rgb")
    _refused(tmp_path, ckpt, "'rgb' .* does not fit model 'TinyNet'", model=model, train=wrong,
             val=val)


def test_target_that_cannot_honour_the_plan_is_refused(tmp_path, finished):
    ckpt, model, train, val = finished
    _refused(tmp_path, ckpt, "w4 not supported by arm-cpu-tflite", model=model,
             train=train, val=val, cfg=replace(CFG, weight_bits=4))
    _refused(tmp_path, ckpt, "per-channel weights asked for, but npu-int8-per-tensor cannot",
             model=model, train=train, val=val, target="npu-int8-per-tensor",
             cfg=replace(CFG, per_channel=True))
    _refused(tmp_path, ckpt, "a16 not supported", model=model, train=train, val=val,
             cfg=replace(CFG, act_bits=16))
