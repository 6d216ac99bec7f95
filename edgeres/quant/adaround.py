"""AdaRound (Nagel et al. 2020): learn whether each weight rounds up or down.

Round-to-nearest minimises each weight's own error, not the layer's output error. AdaRound
keeps the PTQ scales and learns, per weight, a soft rounding ``h(V)`` in [0, 1] that minimises
``|| f(W_soft x_q) - f(W x) ||^2`` with a regulariser that anneals ``h`` to 0 or 1. Two choices
here, and why:

* Asymmetric reconstruction: the input ``x_q`` comes from the already quantized layers before
  (fake-quantized activations and rounded weights), the target ``f(W x)`` from the float model.
  Each layer then also absorbs the error its inputs carry, which is where 8-bit activations
  lose most on MobileNetV2 (see BENCHMARKS.md).
* One pass, layer by layer in graph order, over both streams at once (float and quantized),
  so no layer's inputs are recomputed: the cost is one forward of the calibration set plus
  ``iters`` small steps per weighted layer.

No maintained library does this on edgeres's IR with its exact QParams (brevitas and AIMET
each need their own model representation), so it is written here against the paper's
equations (rectified sigmoid with zeta=1.1, gamma=-0.1; lambda=0.01; beta 20 -> 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from edgeres.graph.ir import OPS, Graph, Node
from edgeres.quant.qmodel import QModel, QuantWeight

ZETA, GAMMA = 1.1, -0.1
REG_WEIGHT = 0.01
BETA_START, BETA_END = 20.0, 2.0
WARMUP = 0.2  # fraction of steps with the reconstruction loss alone


def _rectified_sigmoid(v: Tensor) -> Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def _init_v(rest: Tensor) -> Tensor:
    """V such that h(V) equals the fractional part: start from round-to-nearest's neighbour."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def _scale_like(qw: QuantWeight, w: Tensor) -> Tensor:
    scale = torch.from_numpy(qw.qparams.scale.astype(np.float32))
    axis = qw.qparams.spec.axis
    if axis is None:
        return scale.reshape([1] * w.dim())
    shape = [1] * w.dim()
    shape[axis] = -1
    return scale.reshape(shape)


def learn_rounding(
    node: Node, qw: QuantWeight, x_q: Tensor, y_float: Tensor, iters: int, batch: int,
    seed: int = 0,
) -> np.ndarray:
    """Integer codes of ``node``'s weight (same QParams) that best map ``x_q`` to ``y_float``."""
    w = node.params["weight"].detach().to(torch.float32)
    bias = node.params.get("bias")
    bias = None if bias is None else bias.detach().to(torch.float32)
    spec = qw.qparams.spec
    s = _scale_like(qw, w)
    w_floor = torch.floor(w / s)
    v = _init_v(w / s - w_floor).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=1e-2)
    fn = OPS[node.op]
    gen = torch.Generator().manual_seed(seed)
    n = x_q.shape[0]
    warm = int(WARMUP * iters)
    for step in range(iters):
        idx = torch.randint(0, n, (min(batch, n),), generator=gen)
        h = _rectified_sigmoid(v)
        w_soft = s * (w_floor + h).clamp(spec.qmin, spec.qmax)
        params = {"weight": w_soft} if bias is None else {"weight": w_soft, "bias": bias}
        loss = (fn(node, [x_q[idx]], params) - y_float[idx]).pow(2).mean()
        if step >= warm:
            frac = (step - warm) / max(1, iters - warm)
            beta = BETA_END + 0.5 * (BETA_START - BETA_END) * (1 + math.cos(math.pi * frac))
            loss = loss + REG_WEIGHT * (1 - (2 * h - 1).abs().pow(beta)).sum() / h.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        codes = (w_floor + (_rectified_sigmoid(v) >= 0.5).float()).clamp(spec.qmin, spec.qmax)
    return codes.numpy().astype(spec.storage_dtype())


def _requantized(
    node: Node, qw: QuantWeight, codes: np.ndarray, in_mean: Tensor | None
) -> QuantWeight:
    """The node's QuantWeight with new codes and its bias on the same input x weight scale
    grid, bias-corrected for the new codes when ``in_mean`` is given."""
    if qw.bias_qparams is None or node.params.get("bias") is None:
        return QuantWeight(codes, qw.qparams)
    bias = node.params["bias"].detach().to(torch.float64)
    if in_mean is not None:
        from edgeres.quant.ptq import weight_shift

        w = node.params["weight"].detach().to(torch.float64)
        dq = qw.qparams.dequantize(torch.from_numpy(codes.astype(np.int64)))
        bias = bias - weight_shift(node, dq - w, in_mean)
    bqp = qw.bias_qparams
    bscale = torch.from_numpy(bqp.scale.astype(np.float64))
    bias_codes = torch.round(bias / bscale).clamp(-(2**31), 2**31 - 1).to(torch.int64).numpy()
    return QuantWeight(codes, qw.qparams, bias_codes.astype(np.int32), bqp)


def adaround(
    qmodel: QModel,
    calib: Tensor,
    iters: int = 300,
    batch: int = 16,
    skip: frozenset[str] = frozenset(),
    in_means: dict[str, Tensor] | None = None,
    progress: bool = False,
) -> dict[str, QuantWeight]:
    """New QuantWeights for every conv/linear of ``qmodel`` (except ``skip``), learned on
    ``calib``. Scales, zero points and activation QParams are left as PTQ chose them.
    ``in_means`` (channel means of each layer's input) bias-correct the learned codes."""
    graph: Graph = qmodel.graph
    qp = qmodel.act_qparams
    weights = dict(qmodel.weights)
    name = graph.inputs[0].name
    x = calib.to(torch.float32)
    f_env: dict[str, Tensor] = {name: x}
    q_env: dict[str, Tensor] = {name: qp[name].fake_quantize(x) if name in qp else x}
    last_use = {t: i for i, n in enumerate(graph.nodes) for t in n.inputs}
    todo = {n.name for n in graph.nodes if n.name in weights and n.name not in skip
            and n.op in ("conv2d", "linear")}
    cols = (TextColumn("AdaRound"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[layer]}"), TimeElapsedColumn())
    with Progress(*cols, disable=not progress, transient=True) as bar:
        task = bar.add_task("adaround", total=len(todo), layer="")
        for step, node in enumerate(graph.nodes):
            fn = OPS[node.op]
            with torch.no_grad():
                fp = {k: v.to(torch.float32) for k, v in node.params.items()}
                y_f = fn(node, [f_env[i] for i in node.inputs], fp)
            if node.name in todo:
                bar.update(task, layer=node.name)
                codes = learn_rounding(node, weights[node.name], q_env[node.inputs[0]], y_f,
                                       iters, batch, seed=step)
                mean = None if in_means is None else in_means.get(node.inputs[0])
                weights[node.name] = _requantized(node, weights[node.name], codes, mean)
                bar.advance(task)
            with torch.no_grad():
                qparams = dict(node.params)
                if node.name in weights:
                    qparams.update(weights[node.name].dequantized())
                qparams = {k: v.to(torch.float32) for k, v in qparams.items()}
                y_q = fn(node, [q_env[i] for i in node.inputs], qparams)
                q_env[node.output] = (qp[node.output].fake_quantize(y_q)
                                      if node.output in qp else y_q)
                f_env[node.output] = y_f
            for t in node.inputs:
                if last_use.get(t) == step:
                    f_env.pop(t, None)
                    q_env.pop(t, None)
    return weights
