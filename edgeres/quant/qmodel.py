"""QModel: the one exact description of a quantized model.

A QModel is the float graph plus every number a runtime needs: integer weight codes with
their QParams, int32 bias codes, and QParams for each quantized activation tensor. Exporters
write exactly these numbers; :meth:`QModel.simulate` runs them in torch and is the reference
every runtime is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from edgeres.graph.ir import Graph, run_graph
from edgeres.qtypes import QParams


@dataclass
class QuantWeight:
    """A node's quantized parameters: integer codes and their QParams (bias optional)."""

    codes: np.ndarray
    qparams: QParams
    bias_codes: np.ndarray | None = None
    bias_qparams: QParams | None = None

    def dequantized(self) -> dict[str, Tensor]:
        out = {"weight": self.qparams.dequantize(torch.from_numpy(self.codes.astype(np.int64)))}
        if self.bias_codes is not None and self.bias_qparams is not None:
            out["bias"] = self.bias_qparams.dequantize(
                torch.from_numpy(self.bias_codes.astype(np.int64))
            )
        return out


@dataclass
class QModel:
    """Graph + exact integers. Tensors absent from ``act_qparams`` stay float.

    ``float_params`` holds params of nodes that stay float but carry parameters the runtime
    needs in float (e.g. LayerNorm gamma/beta); they come from the graph itself.
    """

    graph: Graph
    act_qparams: dict[str, QParams]
    weights: dict[str, QuantWeight]
    scheme: str = "ptq"
    meta: dict = field(default_factory=dict)

    def param_overrides(self) -> dict[str, dict[str, Tensor]]:
        out: dict[str, dict[str, Tensor]] = {}
        for name, qw in self.weights.items():
            p = dict(self.graph.node(name).params)
            p.update(qw.dequantized())
            out[name] = p
        return out

    def simulate(self, x: Tensor | dict[str, Tensor], keep: bool = False) -> dict[str, Tensor]:
        """Run the integer model in torch (float64 over dequantized codes, exact accumulators)."""
        return run_graph(self.graph, x, self.act_qparams, self.param_overrides(), keep=keep)

    def is_quantized(self, tensor: str) -> bool:
        return tensor in self.act_qparams

    def float_nodes(self) -> list[str]:
        """Nodes whose output stays float (reported as running outside the integer path)."""
        return [n.name for n in self.graph.nodes if n.output not in self.act_qparams]
