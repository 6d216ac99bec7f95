"""Block reconstruction: learn weight rounding, biases and activation steps, block by block.

Range setting alone tops out near 96 % agreement on MobileNetV2-1.0 int8 (BENCHMARKS.md:
even ranges calibrated on the scored views themselves), because the 8-bit activations, not
the ranges, carry the noise. This is the PTQ-by-optimisation answer of BRECQ (Li et al.
2021) with QDrop's randomly dropped activation quantization (Wei et al. 2022):

* The graph is cut into blocks at tensors through which everything flows (a residual block
  ends at its ``add``; plain layers are grouped so each block holds a few weighted layers).
* Each block learns, against the float block's output on the same calibration inputs:
  AdaRound's soft rounding of every weight (the PTQ weight scales stay), each bias as a real
  number (later rounded onto its int32 grid), and the step size of every activation it
  produces (LSQ, on a log scale; zero points stay). The model's outputs keep their
  never-clipped range (see :class:`PTQConfig`).
* QDrop: during training each activation element (the block's input included) is quantized
  with probability ``1 - drop`` and left float otherwise, which keeps the learned weights
  from fitting one realisation of the activation noise on a small calibration set.
* The next block's inputs come from this block run fully quantized (hard rounding, no drop),
  so every block also absorbs the error its inputs carry.

Everything learned lands in the QModel's exact numbers (codes, int32 bias codes, QParams),
so exporters and the integer simulation need nothing new. No library does this on
edgeres's IR with its exact QParams (brevitas and AIMET each need their own model
representation), so it is written here against the papers' equations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from edgeres.errors import UserError
from edgeres.graph.ir import OPS, Graph, Node
from edgeres.qtypes import QParams, bias_qparams
from edgeres.quant.adaround import BETA_END, BETA_START, REG_WEIGHT, _init_v, _rectified_sigmoid
from edgeres.quant.qmodel import QModel, QuantWeight

WARMUP = 0.2  # fraction of steps before the rounding regulariser starts
LR_ROUNDING, LR_STEP, LR_BIAS = 1e-2, 2e-3, 1e-4


@dataclass(frozen=True)
class Block:
    """A run of nodes whose only way in is ``input`` and whose only way out is ``output``."""

    nodes: tuple[Node, ...]
    input: str
    output: str

    @property
    def label(self) -> str:
        return self.nodes[0].name if len(self.nodes) == 1 else \
            f"{self.nodes[0].name} .. {self.nodes[-1].name}"


def cut_blocks(graph: Graph, weighted: set[str], min_weighted: int = 3) -> list[Block]:
    """Split ``graph`` where exactly one tensor is alive, then group the pieces so that each
    block holds at least ``min_weighted`` weighted nodes (the last one may hold fewer)."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UserError("block reconstruction needs a model with one input and one output; "
                        "use adaround_iters for per-layer reconstruction instead")
    last_use: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for t in n.inputs:
            last_use[t] = i
    for t in graph.outputs:
        last_use[t] = len(graph.nodes)
    produced = {graph.inputs[0].name: -1} | {n.output: i for i, n in enumerate(graph.nodes)}
    blocks: list[Block] = []
    start, entry, count = 0, graph.inputs[0].name, 0
    alive: set[str] = {graph.inputs[0].name}
    for i, node in enumerate(graph.nodes):
        alive.add(node.output)
        alive = {t for t in alive if last_use.get(t, -1) > i}
        count += node.name in weighted
        is_cut = len(alive) == 1 and produced[next(iter(alive))] == i
        if (is_cut and count >= min_weighted) or i == len(graph.nodes) - 1:
            blocks.append(Block(tuple(graph.nodes[start:i + 1]), entry, node.output))
            start, entry, count = i + 1, node.output, 0
    if len(blocks) > 1 and sum(n.name in weighted for n in blocks[-1].nodes) == 0:
        tail = blocks.pop()  # a weightless tail (pooling, reshape) joins the block before it
        blocks[-1] = Block(blocks[-1].nodes + tail.nodes, blocks[-1].input, tail.output)
    return blocks


class _Dropper:
    """QDrop's element-wise choice between the float and the quantized value.

    The mask comes from numpy's generator as raw bytes: torch's CPU generator costs more
    than the block's convolutions on 112x112 maps."""

    def __init__(self, drop: float, seed: int) -> None:
        self.drop = drop
        self.rng = np.random.default_rng(seed)
        self.threshold = int(round(drop * 256))

    def __call__(self, x: Tensor, xq: Tensor) -> Tensor:
        if self.threshold <= 0:
            return xq
        raw = torch.frombuffer(bytearray(self.rng.bytes(x.numel())), dtype=torch.uint8)
        return torch.where(raw.reshape(x.shape) < self.threshold, x, xq)


class _ActStep(nn.Module):
    """A learned per-tensor step (log scale) over a fixed zero point and code range.

    torch's fused LSQ kernel computes the straight-through gradient for x and the LSQ
    gradient for the step in one pass."""

    def __init__(self, qp: QParams) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor([math.log(float(qp.scale))]))
        self.register_buffer("zp", torch.tensor([float(qp.zero_point)]))
        self.spec = qp.spec

    def forward(self, x: Tensor) -> Tensor:
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, self.log_scale.exp(), self.zp, self.spec.qmin, self.spec.qmax, 1.0)

    def qparams(self) -> QParams:
        scale = np.asarray(np.float32(self.log_scale.detach().exp().item()))
        return QParams(self.spec, scale, np.asarray(np.int64(self.zp.item())))


def _fixed_quant(qp: QParams, x: Tensor) -> Tensor:
    """Fake quantization with fixed QParams and a straight-through gradient for x."""
    return torch.fake_quantize_per_tensor_affine(
        x, float(qp.scale), int(qp.zero_point), qp.spec.qmin, qp.spec.qmax)


class _Rounding(nn.Module):
    """AdaRound's soft rounding of one weight, plus its bias as a free real parameter."""

    def __init__(self, node: Node, qw: QuantWeight) -> None:
        super().__init__()
        w = node.params["weight"].detach().to(torch.float32)
        spec = qw.qparams.spec
        scale = torch.from_numpy(np.asarray(qw.qparams.scale, np.float32))
        shape = [1] * w.dim()
        if spec.axis is not None:
            shape[spec.axis] = -1
        self.register_buffer("scale", scale.reshape(shape))
        self.register_buffer("floor", torch.floor(w / self.scale))
        self.v = nn.Parameter(_init_v(w / self.scale - self.floor))
        self.qmin, self.qmax = spec.qmin, spec.qmax
        b = qw.dequantized().get("bias")
        self.bias = None if b is None else nn.Parameter(b.detach().to(torch.float32).clone())

    def soft(self) -> Tensor:
        return _rectified_sigmoid(self.v)

    def params(self, hard: bool) -> dict[str, Tensor]:
        h = (self.soft() >= 0.5).float() if hard else self.soft()
        out = {"weight": self.scale * (self.floor + h).clamp(self.qmin, self.qmax)}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def codes(self) -> Tensor:
        with torch.no_grad():
            return (self.floor + (self.soft() >= 0.5).float()).clamp(self.qmin, self.qmax)


class _BlockNet(nn.Module):
    """One block with its learnable rounding, biases and activation steps."""

    def __init__(self, block: Block, qmodel: QModel, learn_steps: set[str],
                 shared: Mapping[str, str], adaround: set[str]) -> None:
        super().__init__()
        self.block = block
        self.qp = qmodel.act_qparams
        self.shared = shared
        self.steps = nn.ModuleDict()
        self.keys: dict[str, str] = {}
        for t in [block.input, *(n.output for n in block.nodes)]:
            if t in learn_steps:
                self.keys[t] = f"t{len(self.keys)}"
                self.steps[self.keys[t]] = _ActStep(self.qp[t])
        self.rounding = nn.ModuleDict()
        self.rkeys: dict[str, str] = {}
        for n in block.nodes:
            if n.name in adaround:
                self.rkeys[n.name] = f"w{len(self.rkeys)}"
                self.rounding[self.rkeys[n.name]] = _Rounding(n, qmodel.weights[n.name])
        overrides = {n.name: QuantWeight.dequantized(qmodel.weights[n.name])
                     for n in block.nodes if n.name in qmodel.weights}
        self.fixed = {n.name: {k: v.to(torch.float32)
                               for k, v in {**n.params, **overrides.get(n.name, {})}.items()}
                      for n in block.nodes}

    def _quant(self, t: str, y: Tensor, drop: _Dropper | None) -> Tensor:
        root = self.shared.get(t, t)
        if root in self.keys:
            yq = self.steps[self.keys[root]](y)
        elif t in self.qp:
            yq = _fixed_quant(self.qp[t], y)
        else:
            return y
        return yq if drop is None else drop(y, yq)

    def forward(self, x: Tensor, drop: _Dropper | None, hard: bool,
                quantize_input: bool) -> Tensor:
        b = self.block
        env = {b.input: self._quant(b.input, x, drop) if quantize_input else x}
        for node in b.nodes:
            key = self.rkeys.get(node.name)
            params = self.rounding[key].params(hard) if key else self.fixed[node.name]
            y = OPS[node.op](node, [env[i] for i in node.inputs], params)
            env[node.output] = self._quant(node.output, y, drop)
        return env[b.output]

    def regulariser(self, beta: float) -> Tensor:
        terms = [(1 - (2 * r.soft() - 1).abs().pow(beta)).mean() for r in self.rounding.values()]
        return torch.stack(terms).sum() if terms else torch.zeros(())


def _run_float(block: Block, x: Tensor) -> Tensor:
    env = {block.input: x}
    for node in block.nodes:
        p = {k: v.to(torch.float32) for k, v in node.params.items()}
        env[node.output] = OPS[node.op](node, [env[i] for i in node.inputs], p)
    return env[block.output]


def _batched(fn, x: Tensor, size: int) -> Tensor:  # noqa: ANN001 - a tensor -> tensor map
    with torch.no_grad():
        return torch.cat([fn(x[i:i + size]) for i in range(0, x.shape[0], size)])


def _train_block(net: _BlockNet, fp_in: Tensor, q_in: Tensor, target: Tensor, iters: int,
                 batch: int, drop: _Dropper, first: bool, gen: torch.Generator) -> None:
    groups = [{"params": [s.log_scale for s in net.steps.values()], "lr": LR_STEP},
              {"params": [r.v for r in net.rounding.values()], "lr": LR_ROUNDING},
              {"params": [r.bias for r in net.rounding.values() if r.bias is not None],
               "lr": LR_BIAS}]
    groups = [g for g in groups if g["params"] and g["lr"] > 0]
    if not groups:
        return
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    warm = int(WARMUP * iters)
    n = fp_in.shape[0]
    for step in range(iters):
        idx = torch.randint(0, n, (min(batch, n),), generator=gen)
        # The first block quantizes the image itself (its input step is learned here); the
        # others take QDrop's element-wise mix of the float and the quantized input.
        x = fp_in[idx] if first else drop(fp_in[idx], q_in[idx])
        out = net(x, drop, hard=False, quantize_input=first)
        loss = (out - target[idx]).pow(2).mean() / target[idx].pow(2).mean().clamp(min=1e-12)
        if step >= warm and net.rounding:
            frac = (step - warm) / max(1, iters - warm)
            beta = BETA_END + 0.5 * (BETA_START - BETA_END) * (1 + math.cos(math.pi * frac))
            loss = loss + REG_WEIGHT * net.regulariser(beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def _on_bias_grid(codes: np.ndarray, qw: QuantWeight, bias: Tensor | None,
                  in_qp: QParams) -> QuantWeight:
    """``codes`` with ``bias`` (float) as int32 codes on the input x weight scale grid."""
    if bias is None or qw.bias_qparams is None:
        return QuantWeight(codes, qw.qparams)
    bqp = bias_qparams(in_qp, qw.qparams)
    steps = torch.round(bias.detach().to(torch.float64)
                        / torch.from_numpy(bqp.scale.astype(np.float64)))
    bias_codes = steps.clamp(-(2**31), 2**31 - 1).to(torch.int64).numpy().astype(np.int32)
    return QuantWeight(codes, qw.qparams, bias_codes, bqp)


def reconstruct(
    qmodel: QModel,
    calib: Tensor,
    iters: int = 500,
    batch: int = 16,
    drop: float = 0.5,
    shared: Mapping[str, str] | None = None,
    frozen: frozenset[str] = frozenset(),
    skip: frozenset[str] = frozenset(),
    progress: bool = False,
    seed: int = 0,
) -> QModel:
    """``qmodel`` with every block reconstructed on ``calib`` (same graph, new numbers).

    ``shared`` maps tensors to the tensor whose QParams they reuse (the plan's); ``frozen``
    names tensors whose QParams the runtime fixes (softmax, sigmoid); ``skip`` names layers
    whose weights are given (REx terms) and keep their codes.
    """
    graph = qmodel.graph
    shared = dict(shared or {})
    roots = set(shared.values())
    learn_steps = {t for t, qp in qmodel.act_qparams.items()
                   if t not in graph.outputs and t not in shared and qp.spec.axis is None
                   and t not in frozen}
    learn_steps -= {t for t in roots if t in graph.outputs}
    adaround = {n.name for n in graph.nodes if n.name in qmodel.weights and n.name not in skip
                and n.op in ("conv2d", "linear")}
    blocks = cut_blocks(graph, adaround)
    act_qp = dict(qmodel.act_qparams)
    weights = dict(qmodel.weights)
    gen = torch.Generator().manual_seed(seed)
    dropper = _Dropper(drop, seed)
    fp_in = calib.to(torch.float32)
    q_in = fp_in
    cols = (TextColumn("reconstructing"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[block]}"), TimeElapsedColumn())
    with Progress(*cols, disable=not progress, transient=True) as bar:
        task = bar.add_task("blocks", total=len(blocks), block="")
        for i, block in enumerate(blocks):
            bar.update(task, block=block.label)
            current = QModel(graph, act_qp, weights, qmodel.scheme, qmodel.meta)
            net = _BlockNet(block, current, learn_steps, shared, adaround)
            target = _batched(lambda x, b=block: _run_float(b, x), fp_in, 64)
            _train_block(net, fp_in, q_in, target, iters, batch, dropper, i == 0, gen)
            for t, key in net.keys.items():
                act_qp[t] = net.steps[key].qparams()
            for t, src in shared.items():
                act_qp[t] = act_qp[src]
            for node in block.nodes:
                key = net.rkeys.get(node.name)
                if key:
                    r, qw = net.rounding[key], weights[node.name]
                    codes = r.codes().numpy().astype(qw.qparams.spec.storage_dtype())
                    weights[node.name] = _on_bias_grid(codes, qw, r.bias, act_qp[node.inputs[0]])
            net.qp = act_qp
            q_in = _batched(lambda x, n=net, f=i == 0: n(x, None, hard=True, quantize_input=f),
                            q_in, 64)
            fp_in = target
            bar.advance(task)
    for name, qw in weights.items():  # layers not learned here whose input step moved
        if name not in adaround and qw.bias_codes is not None:
            weights[name] = _on_bias_grid(qw.codes, qw, qw.dequantized()["bias"],
                                          act_qp[graph.node(name).inputs[0]])
    meta = {**qmodel.meta, "blocks": [b.label for b in blocks]}
    return QModel(graph, act_qp, weights, qmodel.scheme, meta)
