"""Small explicit graph rewrites: fold BatchNorm, fuse activations, lower leftover BN.

Each rewrite takes a Graph and returns a new Graph; none mutates parameter tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from edgeres.graph.ir import Graph, Node

if TYPE_CHECKING:
    from edgeres.targets import Lowering

FUSABLE_ACTS = ("relu", "relu6")
FUSING_OPS = ("conv2d", "linear", "add")


def _replace_uses(graph: Graph, old: str, new: str) -> None:
    for node in graph.nodes:
        node.inputs = [new if t == old else t for t in node.inputs]
    graph.outputs = [new if t == old else t for t in graph.outputs]


def _single_consumer(graph: Graph, tensor: str) -> Node | None:
    users = graph.consumers(tensor)
    if len(users) == 1 and tensor not in graph.outputs:
        return users[0]
    return None


def fold_batchnorm(graph: Graph) -> Graph:
    """conv2d -> batchnorm (conv output used only by the BN) becomes one conv2d."""
    g = graph.copy()
    for bn in [n for n in g.nodes if n.op == "batchnorm"]:
        conv = g.producer(bn.inputs[0])
        if conv is None or conv.op != "conv2d" or conv.attrs["act"] != "none":
            continue
        if _single_consumer(g, conv.output) is not bn:
            continue
        scale, shift = bn.params["scale"].double(), bn.params["shift"].double()
        w, b = conv.params["weight"], conv.params["bias"]
        conv.params = {  # in float64, rounded once: the same bits on every CPU
            "weight": (w.double() * scale.reshape(-1, 1, 1, 1)).to(w.dtype),
            "bias": (b.double() * scale + shift).to(b.dtype),
        }
        g.nodes.remove(bn)
        _replace_uses(g, bn.output, conv.output)
        g.shapes.pop(bn.output, None)
    return g


def fuse_activations(graph: Graph) -> Graph:
    """ReLU/ReLU6 right after conv2d/linear/add (sole consumer) folds into that node's ``act``."""
    g = graph.copy()
    for act in [n for n in g.nodes if n.op == "act" and n.attrs["kind"] in FUSABLE_ACTS]:
        prod = g.producer(act.inputs[0])
        if prod is None or prod.op not in FUSING_OPS or prod.attrs.get("act", "none") != "none":
            continue
        if _single_consumer(g, prod.output) is not act:
            continue
        prod.attrs["act"] = act.attrs["kind"]
        g.nodes.remove(act)
        _replace_uses(g, act.output, prod.output)
        g.shapes.pop(act.output, None)
    return g


def batchnorm_as_depthwise(graph: Graph) -> Graph:
    """A BatchNorm that could not fold (e.g. a pre-norm) becomes a depthwise 1x1 conv.

    Every target runs depthwise convs in integer; a lone affine op would stay float.
    """
    g = graph.copy()
    for node in g.nodes:
        if node.op != "batchnorm":
            continue
        c = node.params["scale"].numel()
        node.op = "conv2d"
        node.attrs = {
            "stride": (1, 1),
            "padding": (0, 0, 0, 0),
            "dilation": (1, 1),
            "groups": c,
            "act": "none",
        }
        node.params = {
            "weight": node.params["scale"].reshape(c, 1, 1, 1).float(),
            "bias": node.params["shift"].float(),
        }
    return g


def silu_as_sigmoid_mul(graph: Graph) -> Graph:
    """Every SiLU as ``x * sigmoid(x)``: an act(sigmoid) node, then a mul writing the SiLU's
    output. For runtimes with int8 LOGISTIC and MUL kernels but no int8 SiLU and no GATHER
    for the exact lookup table (Ethos-U through Vela): both halves then run on the NPU instead
    of the whole SiLU in float on the CPU. The integer model rounds twice (the sigmoid on its
    fixed 1/256 grid, then the product), and the simulation follows it node by node."""
    g = graph.copy()
    nodes: list[Node] = []
    for n in g.nodes:
        if n.op != "act" or n.attrs.get("kind") != "silu":
            nodes.append(n)
            continue
        gate = f"{n.name}.sigmoid"
        nodes.append(Node(gate, "act", [n.inputs[0]], gate, {"kind": "sigmoid"}))
        nodes.append(Node(n.name, "mul", [n.inputs[0], gate], n.output, {}))
        g.shapes[gate] = g.shapes[n.output]
    g.nodes = nodes
    return g


def lower_for_target(graph: Graph, lowering: Lowering) -> Graph:
    """The graph rewritten as the target's profile says its activations are written
    (``[ops.lowering]``); idempotent, so every entry point may apply it."""
    return silu_as_sigmoid_mul(graph) if lowering.silu == "sigmoid-mul" else graph


def canonicalize(graph: Graph) -> Graph:
    """The canonical float graph: BN folded, activations fused, no batchnorm left."""
    g = fold_batchnorm(graph)
    g = batchnorm_as_depthwise(g)
    g = fuse_activations(g)
    assert all(n.op != "batchnorm" for n in g.nodes)
    return g


def strip_params_grad(graph: Graph) -> Graph:
    g = graph.copy()
    for node in g.nodes:
        node.params = {k: v.detach() for k, v in node.params.items()}
    return g


__all__ = [
    "canonicalize",
    "fold_batchnorm",
    "fuse_activations",
    "batchnorm_as_depthwise",
    "strip_params_grad",
    "torch",
]
