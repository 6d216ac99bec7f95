"""AdaRound: learned rounding keeps PTQ's scales, moves each code by at most one step from the
float value, and reproduces the float model better than round-to-nearest.

Oracles: the float graph (``run_graph``) for output error on held-out inputs, ``floor``/``ceil``
of ``w / scale`` for the allowed codes, a second identical run for determinism.
"""

import numpy as np
import pytest
import torch

from edgeres.config import PTQConfig
from edgeres.errors import UserError
from edgeres.graph.capture import capture
from edgeres.graph.ir import run_graph
from edgeres.quant.ptq import quantize_graph
from edgeres.targets import load_target


class SmallResNet(torch.nn.Module):
    """Stem, an inverted residual block and a classifier: conv, depthwise, add, linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, 2, 1), torch.nn.ReLU6())
        self.block = torch.nn.Sequential(
            torch.nn.Conv2d(16, 48, 1), torch.nn.ReLU6(),
            torch.nn.Conv2d(48, 48, 3, 1, 1, groups=48), torch.nn.ReLU6(),
            torch.nn.Conv2d(48, 16, 1),
        )
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = y + self.block(y)
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def setup():
    model = SmallResNet().eval()
    gen = torch.Generator().manual_seed(1)
    calib = torch.rand(64, 1, 16, 16, generator=gen) * 2 - 1
    held_out = torch.rand(64, 1, 16, 16, generator=gen) * 2 - 1
    graph = capture(model, calib[:1])
    target = load_target("arm-cpu-onnx")  # allows 4-bit weights, where rounding matters most
    nearest = quantize_graph(graph, PTQConfig(weight_bits=4, bias_correction=False), target, calib)
    learned = quantize_graph(graph, PTQConfig(weight_bits=4, adaround_iters=150), target, calib)
    corrected = quantize_graph(graph, PTQConfig(weight_bits=4), target, calib)
    return graph, calib, held_out, target, nearest, learned, corrected


def test_scales_are_kept_and_codes_move_at_most_one_step(setup) -> None:
    graph, _, _, _, nearest, learned, _ = setup
    assert set(learned.weights) == set(nearest.weights)
    for name, qw in learned.weights.items():
        ref = nearest.weights[name]
        assert qw.qparams == ref.qparams
        w = graph.node(name).params["weight"].detach().double()
        scaled = qw.qparams.quantize(w).double()  # nearest code (clamped)
        axis = qw.qparams.spec.axis
        s = torch.from_numpy(qw.qparams.scale.astype(np.float64))
        s = s.reshape([-1] + [1] * (w.dim() - 1)) if axis is not None else s
        lo = torch.floor(w / s).clamp(qw.qparams.spec.qmin, qw.qparams.spec.qmax)
        hi = torch.ceil(w / s).clamp(qw.qparams.spec.qmin, qw.qparams.spec.qmax)
        codes = torch.from_numpy(qw.codes.astype(np.float64))
        assert torch.all((codes == lo) | (codes == hi)), name
        assert (codes - scaled).abs().max() <= 1


def test_learned_rounding_beats_nearest_on_held_out_inputs(setup) -> None:
    graph, _, held_out, _, nearest, learned, corrected = setup
    ref = run_graph(graph, held_out)[graph.outputs[0]]

    def err(qm) -> float:  # noqa: ANN001
        return float((qm.simulate(held_out)[graph.outputs[0]] - ref).pow(2).mean())

    assert err(learned) < 0.8 * err(nearest)
    assert err(learned) < err(corrected)  # round-to-nearest + analytic bias correction
    changed = sum(int((learned.weights[n].codes != nearest.weights[n].codes).sum())
                  for n in nearest.weights)
    assert changed > 0


def test_adaround_is_deterministic(setup) -> None:
    graph, calib, _, target, _, learned, _ = setup
    again = quantize_graph(graph, PTQConfig(weight_bits=4, adaround_iters=150), target, calib)
    for name, qw in learned.weights.items():
        np.testing.assert_array_equal(qw.codes, again.weights[name].codes)
        np.testing.assert_array_equal(qw.bias_codes, again.weights[name].bias_codes)


def test_negative_iterations_are_refused() -> None:
    with pytest.raises(UserError, match="adaround_iters must be >= 0"):
        PTQConfig(adaround_iters=-1)
