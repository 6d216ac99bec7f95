"""The one brevitas adapter: a QModel's graph as a trainable brevitas network, and back.

Why a mirror of the IR graph rather than brevitas's own graph quantizer: the network that
trains must compute exactly what the QModel describes (each quantized tensor is
``Q(op(DQ(inputs)))``, int32 bias on the input x weight scale grid, residual Adds that
requantize their own output), so that the learned numbers can be read back into a QModel and
exported by edgeres's exporters. Walking the captured graph node by node keeps that 1:1.
BatchNorm is already folded into the convs by capture (QAT trains the folded weights from
the start, as the deployed kernels run them); ReLU6 stays ReLU6 (brevitas's own
preprocessing would turn it into ReLU; nothing here calls it).

brevitas supplies the quantizers: ``QuantConv2d`` / ``QuantLinear`` with learned weight
scales (per channel or per tensor, narrow range as the target asks) and ``Int32Bias``, and
``QuantIdentity`` with a learned scale and zero point for every quantized activation. All
scales and zero points start from a PTQ QModel, so step 0 of QAT *is* the PTQ model.

>>> net = QATNet(ptq_qmodel)                              # doctest: +SKIP
>>> loss = F.cross_entropy(net(x), y); loss.backward()    # doctest: +SKIP
>>> qmodel = qat_to_qmodel(net, meta={"target": "arm-cpu-tflite"})   # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from brevitas.core.scaling import IntScaling
from brevitas.core.zero_point import ParameterZeroPoint, ZeroZeroPoint
from brevitas.inject.enum import ScalingImplType
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear
from brevitas.quant import Int8WeightPerChannelFloat, Int8WeightPerTensorFloat, Int32Bias
from brevitas.quant.shifted_scaled_int import ShiftedUint8ActPerTensorFloat
from brevitas.quant_tensor import IntQuantTensor, QuantTensor
from torch import Tensor, nn

from edgeres.errors import UserError
from edgeres.graph.ir import OPS, Graph, Node, apply_activation
from edgeres.graph.pixels import input_channel_of_weight
from edgeres.qtypes import QParams, QSpec, bias_qparams
from edgeres.quant.plan import SHARE_INPUT_QPARAMS
from edgeres.quant.qmodel import QModel, QuantWeight

# brevitas warns on every conv whose input has a non-zero zero point (it cannot describe the
# accumulator as a QuantTensor then, and returns a plain tensor, which is all we need).
FIXED_ACTS = ("sigmoid", "tanh")
_ACC_WARNING = "Computing zero point of output accumulator not supported yet"


def check_qat_formats(qmodel: QModel) -> None:
    """Formats the brevitas mirror cannot train exactly raise a UserError naming the tensor."""
    for t, qp in qmodel.act_qparams.items():
        s = qp.spec
        if s.per_channel:
            raise UserError(f"tensor '{t}': per-channel activations cannot be trained by QAT")
        if s.symmetric and not s.signed:
            raise UserError(
                f"tensor '{t}': unsigned symmetric activations (zero point at the midpoint) "
                "have no QAT quantizer; use a target with asymmetric or signed activations"
            )
    for name, qw in qmodel.weights.items():
        s = qw.qparams.spec
        if not (s.signed and s.symmetric):
            raise UserError(
                f"layer '{name}': QAT trains symmetric signed weights only, the plan asks for "
                f"{s.describe()}"
            )
        if s.per_channel and s.axis != 0:
            raise UserError(f"layer '{name}': per-channel weights must use axis 0 for QAT")


def _threshold(bits: int, signed: bool, narrow: bool) -> Tensor:
    """The integer range brevitas divides a learned threshold by to get the scale."""
    return IntScaling(narrow_range=narrow, signed=signed)(torch.tensor(float(bits)))


def _threshold_for_scale(scale: np.ndarray, thr: Tensor) -> Tensor:
    """A float32 threshold whose ``threshold / thr`` is exactly the float32 ``scale``.

    So that step 0 of QAT uses the PTQ scales bit for bit, not 1 ulp away.
    """
    s = torch.from_numpy(np.array(scale, dtype=np.float32))
    t = thr.to(torch.float32)
    v = s * t
    for _ in range(4):
        r = v / t
        if torch.equal(r, s):
            break
        v = torch.where(r < s, torch.nextafter(v, v + v.abs() + 1), v)
        v = torch.where(r > s, torch.nextafter(v, torch.zeros_like(v)), v)
    return v


def _act_quantizer(qp: QParams) -> QuantIdentity:
    """A QuantIdentity with a learned scale (and zero point) initialised to ``qp``."""
    spec = qp.spec
    thr = _threshold(spec.bits, spec.signed, spec.narrow_range)
    kwargs = {
        "signed": spec.signed,
        "bit_width": spec.bits,
        "narrow_range": spec.narrow_range,
        "scaling_impl_type": ScalingImplType.PARAMETER,
        "scaling_init": _threshold_for_scale(qp.scale, thr),
    }
    if spec.symmetric:
        kwargs["zero_point_impl"] = ZeroZeroPoint
    else:
        # brevitas's zero point is a learned real offset v: zp = round(|v| / scale) + qmin.
        low = spec.qmin
        kwargs["zero_point_impl"] = ParameterZeroPoint
        kwargs["zero_point_init"] = torch.tensor(
            float(int(qp.zero_point) - low) * float(qp.scale), dtype=torch.float32
        )
    quant = ShiftedUint8ActPerTensorFloat.let(**kwargs)
    return QuantIdentity(act_quant=quant, return_quant_tensor=True)


def _weight_quant(spec: QSpec, scale: np.ndarray, out_channels: int, rank: int):  # noqa: ANN202
    """brevitas weight quantizer (learned scale) with the plan's bits, granularity and range."""
    thr = _threshold(spec.bits, True, spec.narrow_range)
    init = _threshold_for_scale(scale, thr)
    base = Int8WeightPerChannelFloat if spec.per_channel else Int8WeightPerTensorFloat
    if spec.per_channel:
        init = init.reshape(out_channels, *([1] * (rank - 1)))
    return base.let(
        bit_width=spec.bits,
        narrow_range=spec.narrow_range,
        scaling_impl_type=ScalingImplType.PARAMETER,
        scaling_init=init,
    )


def _quant_layer(node: Node, qw: QuantWeight) -> nn.Module:
    """QuantConv2d / QuantLinear holding the node's weights, bias and learned weight scale."""
    w = node.params["weight"].detach().to(torch.float32)
    bias = qw.dequantized().get("bias") if qw.bias_codes is not None else None
    if bias is None and "bias" in node.params:
        bias = node.params["bias"]
    wq = _weight_quant(qw.qparams.spec, qw.qparams.scale, w.shape[0], w.dim())
    bq = Int32Bias if bias is not None else None
    if node.op == "conv2d":
        a = node.attrs
        layer: nn.Module = QuantConv2d(
            w.shape[1] * a["groups"], w.shape[0], tuple(w.shape[2:]), stride=a["stride"],
            padding=0, dilation=a["dilation"], groups=a["groups"], bias=bias is not None,
            weight_quant=wq, bias_quant=bq, return_quant_tensor=False,
        )
    else:
        layer = QuantLinear(
            w.shape[1], w.shape[0], bias=bias is not None, weight_quant=wq, bias_quant=bq,
            return_quant_tensor=False,
        )
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(bias.to(torch.float32))
    return layer


def _runtime_fixed(node: Node) -> bool:
    """Outputs whose QParams the integer kernels fix (TFLite's SOFTMAX/LOGISTIC/TANH rule):
    their quantizers stay frozen at the planned values."""
    return node.op == "softmax" or (node.op == "act" and node.attrs["kind"] in FIXED_ACTS)


def _key(name: str) -> str:
    """ModuleDict keys may not contain dots."""
    return name.replace(".", "__")


def _value(x: Tensor | QuantTensor) -> Tensor:
    return x.value if isinstance(x, QuantTensor) else x


class QATNet(nn.Module):
    """A QModel's graph as a brevitas network: same ops, same quantization points.

    ``layers``: one brevitas QuantConv2d/QuantLinear per weight-quantized node; ``acts``: one
    QuantIdentity per quantized tensor (outputs whose QParams the runtime fixes, e.g. softmax,
    are frozen, and so are the ``frozen`` tensors, e.g. a pixels-in model's input, whose
    first convs' gradients ``input_gain`` rescales (:func:`folded_input_gradient_scale`);
    reshape/transpose outputs reuse their input's codes); ``float_params``: the
    trainable parameters of nodes that stay float (LayerNorm islands, ignored layers).
    """

    def __init__(self, qmodel: QModel, frozen: Collection[str] = (),
                 input_gain: Sequence[float] | None = None) -> None:
        super().__init__()
        check_qat_formats(qmodel)
        self.graph = qmodel.graph
        # layers reading a normalization-folded input: their weights' gain per input channel
        self.input_gain = ({} if input_gain is None else {
            n.name: tuple(input_gain) for n in self.graph.consumers(self.graph.inputs[0].name)
            if n.name in qmodel.weights})
        self.specs = {t: qp.spec for t, qp in qmodel.act_qparams.items()}
        self.weight_specs = {n: qw.qparams.spec for n, qw in qmodel.weights.items()}
        fixed = {n.output for n in self.graph.nodes if _runtime_fixed(n)} | set(frozen)
        self.shared: dict[str, str] = {}
        self.layers = nn.ModuleDict()
        self.acts = nn.ModuleDict()
        self.float_params = nn.ModuleDict()
        act_keys: set[str] = set()
        node_keys: set[str] = set()
        for t in self.graph.tensors():
            if t not in qmodel.act_qparams:
                continue
            node = self.graph.producer(t)
            src = node.inputs[0] if node is not None and node.op in SHARE_INPUT_QPARAMS else None
            if src is not None and qmodel.act_qparams.get(src) == qmodel.act_qparams[t]:
                self.shared[t] = src
                continue
            key = self._unique(_key(t), act_keys)
            self.acts[key] = _act_quantizer(qmodel.act_qparams[t])
            if t in fixed:
                for p in self.acts[key].parameters():
                    p.requires_grad_(False)
        for node in self.graph.nodes:
            if node.name in qmodel.weights:
                if node.inputs[0] not in qmodel.act_qparams:
                    raise UserError(
                        f"{node.describe()}: its input '{node.inputs[0]}' is not quantized, "
                        "so its int32 bias has no scale; QAT needs quantized inputs to weights"
                    )
                key = self._unique(_key(node.name), node_keys)
                self.layers[key] = _quant_layer(node, qmodel.weights[node.name])
            elif node.params:
                key = self._unique(_key(node.name), node_keys)
                self.float_params[key] = nn.ParameterDict(
                    {k: nn.Parameter(v.detach().to(torch.float32).clone())
                     for k, v in node.params.items()}
                )
        self.act_key = {t: _key(t) for t in self.specs if t not in self.shared}
        self.node_key = {n.name: _key(n.name) for n in self.graph.nodes}

    @staticmethod
    def _unique(key: str, keys: set[str]) -> str:
        if key in keys:
            raise UserError(f"names '{key}' collide once dots become '__'; rename the layers")
        keys.add(key)
        return key

    def _quantize(self, t: str, y: Tensor | QuantTensor, env: Mapping) -> Tensor | QuantTensor:
        if t in self.shared:
            src = env[self.shared[t]]
            return src.set(value=_value(y)) if isinstance(src, QuantTensor) else y
        if t in self.act_key:
            return self.acts[self.act_key[t]](_value(y))
        return _value(y)

    def _float_params(self, node: Node) -> Mapping[str, Tensor]:
        key = self.node_key[node.name]
        return self.float_params[key] if key in self.float_params else {}  # noqa: SIM401

    def _weighted(self, node: Node, x: Tensor | QuantTensor) -> Tensor:
        layer = self.layers[self.node_key[node.name]]
        if node.op == "conv2d":
            t, l, b, r = node.attrs["padding"]
            if (t, l, b, r) != (0, 0, 0, 0):
                x = F.pad(x, (l, r, t, b))
        y = _value(layer(x))
        return apply_activation(node.attrs.get("act", "none"), y)

    def run(self, x: Tensor | Mapping[str, Tensor], keep: bool = False) -> dict:
        """Every graph output (``keep``: every tensor) as brevitas computes it.

        Quantized tensors come back as IntQuantTensor (``.int()``, ``.scale``, ...).
        """
        if isinstance(x, Tensor):
            x = {self.graph.inputs[0].name: x}
        env: dict[str, Tensor | QuantTensor] = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_ACC_WARNING)
            for info in self.graph.inputs:
                env[info.name] = self._quantize(info.name, x[info.name].to(torch.float32), env)
            for node in self.graph.nodes:
                xs = [env[i] for i in node.inputs]
                if self.node_key[node.name] in self.layers:
                    y: Tensor = self._weighted(node, xs[0])
                else:
                    y = OPS[node.op](node, [_value(v) for v in xs], self._float_params(node))
                env[node.output] = self._quantize(node.output, y, env)
        if keep:
            return env
        return {t: env[t] for t in self.graph.outputs}

    def forward(self, x: Tensor) -> Tensor:
        """The first graph output as a float tensor (dequantized), for losses."""
        return _value(self.run(x)[self.graph.outputs[0]])


def _act_qparams(net: QATNet) -> dict[str, QParams]:
    out: dict[str, QParams] = {}
    probe = torch.zeros(1)
    for t in net.graph.tensors():
        if t in net.act_key:
            q = net.acts[net.act_key[t]](probe)
            assert isinstance(q, IntQuantTensor)
            scale = q.scale.detach().reshape(()).to(torch.float32).numpy()
            zp = np.int64(torch.round(q.zero_point.detach().reshape(())).item())
            out[t] = QParams(net.specs[t], scale, zp)
        elif t in net.shared:
            out[t] = out[net.shared[t]]
    return out


def _weights(net: QATNet, act: Mapping[str, QParams]) -> dict[str, QuantWeight]:
    out: dict[str, QuantWeight] = {}
    for node in net.graph.nodes:
        key = net.node_key[node.name]
        if key not in net.layers:
            continue
        layer = net.layers[key]
        spec = net.weight_specs[node.name]
        qw = layer.quant_weight()
        scale = qw.scale.detach().to(torch.float32)
        scale = scale.reshape(-1) if spec.per_channel else scale.reshape(())
        wqp = QParams(spec, scale.numpy(), np.zeros(scale.shape, np.int64))
        codes = qw.int().detach().numpy().astype(spec.storage_dtype())
        result = QuantWeight(codes, wqp)
        if layer.bias is not None:
            bqp = bias_qparams(act[node.inputs[0]], wqp)
            b = layer.bias.detach().to(torch.float64)
            bscale = torch.from_numpy(bqp.scale.astype(np.float64))
            bias = torch.round(b / bscale).clamp(-(2**31), 2**31 - 1).to(torch.int64).numpy()
            result.bias_codes, result.bias_qparams = bias.astype(np.int32), bqp
        out[node.name] = result
    return out


def _trained_graph(net: QATNet) -> Graph:
    """The graph with the trained params of float nodes (quantized nodes keep the float
    reference weights: the QModel's integers override them)."""
    g = net.graph.copy()
    for node in g.nodes:
        key = net.node_key[node.name]
        if key in net.float_params:
            node.params = {k: v.detach().clone() for k, v in net.float_params[key].items()}
    return g


@torch.no_grad()
def qat_to_qmodel(net: QATNet, meta: dict | None = None, scheme: str = "qat") -> QModel:
    """Read the learned scales, zero points and integer weights back into a QModel.

    Weight codes are brevitas's own (``quant_weight().int()``); int32 bias codes are the
    trained float bias rounded on the ``s_in * s_w`` grid, as brevitas's Int32Bias does.
    """
    was_training = net.training
    net.eval()
    try:
        act = _act_qparams(net)
        weights = _weights(net, act)
    finally:
        net.train(was_training)
    return QModel(_trained_graph(net), act, weights, scheme=scheme, meta=dict(meta or {}))


def lsq_gradient_scale(net: QATNet) -> None:
    """Scale the gradients of learned scales / zero points by 1/sqrt(N * qmax) (LSQ)."""
    for name, spec in net.weight_specs.items():
        layer = net.layers[net.node_key[name]]
        for pname, p in layer.named_parameters():
            if "scaling_impl" in pname:
                g = 1.0 / math.sqrt(layer.weight.numel() / p.numel() * spec.qmax)
                p.register_hook(lambda grad, g=g: grad * g)
    for t, key in net.act_key.items():
        per_sample = math.prod(net.graph.shapes[t][1:])
        g = 1.0 / math.sqrt(per_sample * (net.specs[t].qmax - net.specs[t].qmin))
        for p in net.acts[key].parameters():
            if p.requires_grad:
                p.register_hook(lambda grad, g=g: grad * g)


def folded_input_gradient_scale(net: QATNet) -> None:
    """Train a folded conv as the unfolded one would train.

    Folding multiplies input channel c's weights by g_c, so their gradient is 1/g_c times the
    unfolded one and an SGD step moves them 1/g_c^2 times as far in the unfolded units (about
    3600x for ImageNet pixels; the first QAT steps wreck the stem). Multiplying the gradient by
    g_c^2 makes each step exactly the unfolded model's; the layer's learned weight scale,
    shared by every input channel, gets the channels' mean. Call after loading a checkpoint,
    like :func:`lsq_gradient_scale` (brevitas replaces parameter objects on load)."""
    for name, gain in net.input_gain.items():
        layer = net.layers[net.node_key[name]]
        w = layer.weight
        g = torch.tensor(gain, dtype=w.dtype)
        chan = input_channel_of_weight(w.shape, layer.groups if isinstance(layer, QuantConv2d)
                                       else 1)
        g2 = (g[chan] ** 2).view(*chan.shape, *([1] * (w.dim() - 2))).to(w.device)
        w.register_hook(lambda grad, g2=g2: grad * g2)
        mean_g2 = float(g.mean()) ** 2
        for pname, p in layer.named_parameters():
            if "scaling_impl" in pname:
                p.register_hook(lambda grad, m=mean_g2: grad * m)


def scale_gradients(net: QATNet) -> None:
    """All gradient hooks a run needs: LSQ's, then a folded input's. After loading a
    checkpoint (brevitas replaces parameter objects on load, and their hooks with them)."""
    lsq_gradient_scale(net)
    folded_input_gradient_scale(net)


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 lazy re-export
    """``from edgeres.quant.qat import run_qat, QATResult`` (they live in qat_train, which
    imports this module)."""
    if name in ("run_qat", "QATResult", "init_net"):
        from edgeres.quant import qat_train

        return getattr(qat_train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["QATNet", "check_qat_formats", "lsq_gradient_scale", "qat_to_qmodel"]
