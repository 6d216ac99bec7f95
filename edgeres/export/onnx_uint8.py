"""int8 weights of a QDQ model stored as uint8 + 128: same values, ONNX Runtime's U8U8 kernels.

ORT's integer kernels for uint8 activations x int8 weights (U8S8) on x86 CPUs without VNNI
add each pair of products into a saturating int16 (VPMADDUBSW: 255 x 127 twice is 64770),
so a conv whose inputs and weights reach the top of their ranges computes wrong results
there (ORT's quantization docs; onnxruntime issue 16105). Stored as uint8 with zero point
+ 128, DequantizeLinear gives the very same real numbers, and ORT fuses the same
QLinearConv / QGemm but runs its U8U8 kernels, which widen to 16 bits before multiplying:
exact on every CPU. ORT's quantizer offers no such rewrite of an existing model (its
``reduce_range`` re-quantizes to 7-bit weights instead), so it is written here.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def weights_as_uint8(model: onnx.ModelProto) -> int:
    """Store every int8 weight initializer read by a DequantizeLinear as uint8 codes + 128,
    its zero point + 128 likewise (a missing zero point becomes 128): DequantizeLinear gives
    the same values, so the model computes the same function, and ORT runs it on its U8U8
    kernels instead of U8S8. Modifies ``model`` in place; returns how many weights changed
    (0 for a model without int8 weights, e.g. one already rewritten).

    Usage: ``m = onnx.load(path); weights_as_uint8(m); onnx.save(m, path_u8)``.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    done: dict[tuple[str, str], tuple[str, str]] = {}
    for node in graph.node:
        w = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if w is None or w.data_type != onnx.TensorProto.INT8:
            continue
        zp_name = node.input[2] if len(node.input) > 2 else ""
        key = (w.name, zp_name)
        if key not in done:
            codes = numpy_helper.to_array(w).astype(np.int16) + 128
            if zp_name:
                if zp_name not in inits:  # a computed zero point: leave this weight alone
                    continue
                zp = numpy_helper.to_array(inits[zp_name]).astype(np.int16) + 128
            else:
                zp = np.full(numpy_helper.to_array(inits[node.input[1]]).shape, 128, np.int16)
            tag = f"_as_uint8_{len(done)}"  # one weight read with two zero points: two copies
            names = (f"{w.name}{tag}", f"{w.name}_zero_point{tag}")
            for name, arr in zip(names, (codes, zp), strict=True):
                graph.initializer.append(numpy_helper.from_array(arr.astype(np.uint8), name))
            done[key] = names
        while len(node.input) < 3:
            node.input.append("")
        node.input[0], node.input[2] = done[key]
    replaced = {name for key in done for name in key if name}
    used = {name for n in graph.node for name in n.input} | {
        v.name for v in (*graph.input, *graph.output)}
    stale = [i for i in graph.initializer if i.name in replaced - used]
    for init in stale:  # the int8 originals no node reads any more
        graph.initializer.remove(init)
    return len(done)


def has_int8_weights(model: onnx.ModelProto) -> bool:
    """Whether any DequantizeLinear reads an int8 initializer (what U8S8 kernels would run)."""
    int8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    return any(n.op_type == "DequantizeLinear" and n.input[0] in int8 for n in model.graph.node)
