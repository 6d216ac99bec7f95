"""Capture: the IR graph computes what the torch module computes, in the canonical form."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeres.errors import UserError
from edgeres.graph.capture import capture
from edgeres.graph.ir import graph_macs, run_graph
from edgeres.graph.rewrites import fold_batchnorm, fuse_activations
from edgeres.zoo import create_model, get_entry, list_models


@pytest.mark.parametrize("name", [m for m in list_models() if m != "emo_5m"])
def test_capture_matches_torch(name: str) -> None:
    e = get_entry(name)
    model = create_model(name)
    torch.manual_seed(0)
    x = torch.randn(2, e.in_chans, e.img_size, e.img_size)
    g = capture(model, x[:1])
    with torch.no_grad():
        ref = model(x).double()
    out = run_graph(g, x)["logits"]
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()
    assert "batchnorm" not in g.op_counts()
    assert all(len(g.shapes[t]) <= 4 for t in g.shapes)


def test_mobilenet_v2_graph_is_canonical() -> None:
    g = capture(create_model("mobilenet_v2_100"), torch.zeros(1, 3, 224, 224))
    counts = g.op_counts()
    assert counts == {"conv2d": 52, "add": 10, "mean": 1, "reshape": 1, "linear": 1}
    # Every expand/depthwise conv carries ReLU6; projections stay linear (signed bottlenecks).
    acts = [n.attrs["act"] for n in g.nodes if n.op == "conv2d"]
    assert acts.count("relu6") == 35 and acts.count("none") == 17
    assert 299e6 < graph_macs(g) < 302e6  # the paper's ~300 MMACs


def test_bn_fold_and_fusion_are_separate_rewrites() -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6()).eval()
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 8, 8)
    raw = capture(m, x, canonical=False)
    assert [n.op for n in raw.nodes] == ["conv2d", "batchnorm", "act"]
    folded = fuse_activations(fold_batchnorm(raw))
    assert [n.op for n in folded.nodes] == ["conv2d"] and folded.nodes[0].attrs["act"] == "relu6"
    assert torch.allclose(
        run_graph(folded, x)["0"]
        if "0" in folded.outputs
        else run_graph(folded, x)[folded.outputs[0]],
        m(x).double(),
        atol=1e-5,
    )


def test_unfoldable_batchnorm_becomes_depthwise() -> None:
    class PreNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(4)
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return x + self.conv(self.norm(x))

    m = PreNorm().eval()
    m.norm.running_mean.uniform_(-1, 1)
    g = capture(m, torch.randn(1, 4, 5, 5))
    norm = g.node("norm")
    assert norm.op == "conv2d" and norm.attrs["groups"] == 4
    x = torch.randn(3, 4, 5, 5)
    assert torch.allclose(run_graph(g, x)["logits"], m(x).double(), atol=1e-5)


def test_mobilenet_v3_squeeze_excite_block() -> None:
    """MobileNetV3's block: hardswish expand and depthwise, a squeeze-excite gate with
    nn.Hardsigmoid and F.hardsigmoid, a linear projection, the residual add."""
    class SqueezeExcite(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)
            self.gate = nn.Hardsigmoid()

        def forward(self, x):
            s = F.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.fc2(F.relu(self.fc1(s)))) * F.hardsigmoid(s)

    block = nn.Sequential(
        nn.Conv2d(8, 32, 1), nn.BatchNorm2d(32), nn.Hardswish(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.Hardswish(),
        SqueezeExcite(32), nn.Conv2d(32, 8, 1), nn.BatchNorm2d(8),
    ).eval()
    g = capture(block, torch.zeros(1, 8, 6, 6))
    kinds = [n.attrs["kind"] for n in g.nodes if n.op == "act"]
    assert kinds.count("hardsigmoid") == 2 and kinds.count("hardswish") == 2
    x = 3 * torch.randn(4, 8, 6, 6)
    assert torch.allclose(run_graph(g, x)["logits"], block(x).double(), atol=1e-5)


def test_unsupported_module_is_named() -> None:
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2))
    with pytest.raises(UserError, match=r"Upsample at '1'"):
        capture(m, torch.zeros(1, 1, 8, 8))


def test_unsupported_function_names_the_source_line() -> None:
    class Spectral(nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).real  # the line the error must point at

    line = Spectral.forward.__code__.co_firstlineno + 1
    with pytest.raises(UserError, match=rf"'fft_fft2'.* at test_capture.py:{line} "
                                        r"\(return torch.fft.fft2\(x\).real"):
        capture(Spectral(), torch.zeros(1, 1, 4, 4))


def test_rank_above_four_is_rejected_with_location() -> None:
    class Rank6(nn.Module):
        def forward(self, x):
            return x.reshape(1, 2, 2, 2, 2, 2).sum()

    with pytest.raises(UserError, match="rank-6"):
        capture(Rank6(), torch.zeros(1, 2, 4, 4))


def test_wrong_input_shape_is_reported() -> None:
    g = capture(create_model("mobilenet_v2_fmnist"), torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"expects \[N, 1, 28, 28\]"):
        run_graph(g, torch.zeros(1, 3, 28, 28))
