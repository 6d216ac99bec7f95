"""Graph capture and rewrites: a model becomes a small, explicit IR that every stage shares."""

from edgeres.graph.ir import Graph, Node, TensorInfo, run_graph

__all__ = ["Graph", "Node", "TensorInfo", "run_graph"]
