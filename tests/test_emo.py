"""EMO: official-equivalence, parameter counts, rank-4 traceability, zoo entries."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.fx as fx
from emo_reference import RefEMO, randomize_, ref_window_attention
from torch import nn

from edgeres.errors import UserError
from edgeres.zoo import create_model, get_entry
from edgeres.zoo.emo import (
    EMO,
    EMO_1M,
    EMO_1M_FMNIST,
    EMO_2M,
    EMO_5M,
    WindowGeometryError,
    convert_official_state_dict,
)
from edgeres.zoo.emo_attention import WindowAttention, WindowGeometry

torch.set_num_threads(1)

# Parameter counts of the official models, from the fvcore tables in the official training
# logs (resources/EMO_*/log_train.txt): 1.361M / 2.377M / 5.109M. The paper rounds them down
# to 1.3M / 2.3M / 5.1M.
OFFICIAL_LOG_PARAMS = {"emo_1m": 1.361e6, "emo_2m": 2.377e6, "emo_5m": 5.109e6}
PAPER_PARAMS = {"emo_1m": 1.3e6, "emo_2m": 2.3e6, "emo_5m": 5.1e6}
CONFIGS = {"emo_1m": EMO_1M, "emo_2m": EMO_2M, "emo_5m": EMO_5M}
STEM_SE_PARAMS = 2 * (24 * 24 + 24)  # the official stem squeeze-excite, off by default here


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def reference_for(cfg, window_sizes=(7, 7, 7, 7)) -> RefEMO:
    return RefEMO(
        dim_in=cfg.in_chans, num_classes=cfg.num_classes, depths=cfg.depths,
        stem_dim=cfg.stem_dim, embed_dims=cfg.dims, exp_ratios=cfg.exp_ratios,
        dw_kss=cfg.dw_kernels, dim_heads=cfg.dim_heads, window_sizes=window_sizes,
        stem_se=cfg.stem_se, stem_stride=cfg.stem_stride, strides=cfg.strides,
    )


def ours_from_reference(cfg, ref: RefEMO) -> EMO:
    model = EMO(cfg)
    model.load_state_dict(convert_official_state_dict(ref.state_dict()), strict=True)
    return model.eval()


# ---- parameter counts ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_param_counts_match_official(name: str) -> None:
    ours = n_params(EMO(CONFIGS[name]))
    with_se = n_params(EMO(replace(CONFIGS[name], stem_se=True)))
    print(f"{name}: {ours:,} params ({with_se:,} with the official stem SE)")
    assert with_se - ours == STEM_SE_PARAMS
    assert round(with_se, -3) == OFFICIAL_LOG_PARAMS[name]  # exact to the logged digits
    assert abs(ours - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.05
    assert get_entry(name).paper_params == pytest.approx(OFFICIAL_LOG_PARAMS[name])


def test_reference_has_the_same_parameter_count() -> None:
    cfg = replace(EMO_2M, stem_se=True)
    assert n_params(reference_for(cfg)) == n_params(EMO(cfg))


# ---- equality with the official (rank-6) formulation ----------------------------------------

@pytest.mark.parametrize("res,window", [(14, 7), (21, 7), (7, 7), (4, 7)])
def test_window_attention_matches_rank6_reference(res: int, window: int) -> None:
    torch.manual_seed(0)
    dim, dim_head = 40, 20
    geom = WindowGeometry.plan(res, window, img_size=224, where="test")
    attn = WindowAttention(dim, dim_head, geom).eval()
    qk = nn.Conv2d(dim, 2 * dim, 1)
    with torch.no_grad():
        qk.weight.copy_(torch.cat([attn.q.weight, attn.k.weight]))
        qk.bias.copy_(torch.cat([attn.q.bias, attn.k.bias]))
    x = torch.randn(3, dim, res, res)
    official_window = window if res > window else 0  # official "<= 0" = one global window
    want = ref_window_attention(x, qk, dim // dim_head, dim_head, official_window)
    torch.testing.assert_close(attn(x), want, atol=1e-5, rtol=1e-5)


def test_window_partition_is_dilated() -> None:
    """Window (i, j) of a 14x14 map holds pixels (2a + i, 2b + j), as in the official code."""
    geom = WindowGeometry.plan(14, 7, img_size=224, where="test")
    attn = WindowAttention(4, 4, geom)
    x = torch.arange(14 * 14, dtype=torch.float32).reshape(1, 1, 14, 14).repeat(1, 4, 1, 1)
    win = attn.partition(x)
    assert win.shape == (4, 4, 7, 7)
    torch.testing.assert_close(win[1, 0], x[0, 0, 0::2, 1::2])  # window (i=0, j=1)
    torch.testing.assert_close(win[2, 0], x[0, 0, 1::2, 0::2])  # window (i=1, j=0)
    torch.testing.assert_close(attn.unpartition(win), x)


@pytest.mark.parametrize("case", ["emo_1m@224", "emo_1m_fmnist@28"])
def test_model_matches_official_reference(case: str) -> None:
    if case == "emo_1m@224":
        cfg, windows, x_shape = replace(EMO_1M, stem_se=True), (7, 7, 7, 7), (2, 3, 224, 224)
    else:  # stage 4 is 4x4: official window_size <= 0 means one global window
        cfg, windows, x_shape = EMO_1M_FMNIST, (7, 7, 7, 0), (3, 1, 28, 28)
    ref = randomize_(reference_for(cfg, windows)).eval()
    ours = ours_from_reference(cfg, ref)
    x = torch.randn(x_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert got.std() > 0.1  # a meaningful signal, not a collapsed output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# ---- deployability: fx tracing, rank <= 4, no baked batch -----------------------------------

class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.ranks: dict[str, int] = {}

    def run_node(self, n: fx.Node):
        value = super().run_node(n)
        if isinstance(value, torch.Tensor):
            self.ranks[n.name] = value.dim()
        return value


@pytest.mark.parametrize("name", ["emo_1m", "emo_1m_fmnist"])
def test_traceable_with_rank_at_most_4(name: str) -> None:
    entry = get_entry(name)
    model = create_model(name)
    gm = fx.symbolic_trace(model)
    reshapes = [n for n in gm.graph.nodes if n.op == "call_method" and n.target == "reshape"]
    assert reshapes, "attention should appear as explicit reshapes"
    for n in reshapes:
        dims = n.args[1:]
        assert all(isinstance(d, int) for d in dims), f"{n}: non-static reshape {dims}"
        assert dims.count(-1) == 1, f"{n}: the batch must be the single -1, got {dims}"
    x = torch.randn(2, entry.in_chans, entry.img_size, entry.img_size)
    rec = _ShapeRecorder(gm)
    with torch.no_grad():
        out = rec.run(x)
        torch.testing.assert_close(out, model(x))
    worst = max(rec.ranks, key=rec.ranks.get)
    assert rec.ranks[worst] <= 4, f"{worst} has rank {rec.ranks[worst]}"
    ops = {n.target for n in gm.graph.nodes if n.op == "call_method"}
    assert ops <= {"reshape", "permute", "transpose", "softmax", "mean"}, ops


def test_batch_is_not_baked_in() -> None:
    model = create_model("emo_1m_fmnist")
    gm = fx.symbolic_trace(model)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        whole = gm(x)
        single = torch.cat([gm(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, single, atol=1e-5, rtol=1e-5)


def test_capture_gives_the_same_numbers() -> None:
    capture = pytest.importorskip("edgeres.graph.capture")
    from edgeres.graph.ir import MAX_RANK, run_graph

    model = create_model("emo_1m_fmnist")
    x = torch.randn(2, 1, 28, 28)
    graph = capture.capture(model, x)
    assert max(len(s) for s in graph.shapes.values()) <= MAX_RANK
    assert {"matmul", "softmax", "layernorm", "transpose"} <= set(graph.op_counts())
    with torch.no_grad():
        want = model(x).double()
    got = next(iter(run_graph(graph, x.double()).values()))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ---- geometry errors -------------------------------------------------------------------------

def test_untileable_img_size_is_a_clear_error() -> None:
    with pytest.raises(WindowGeometryError, match="img_size=256") as info:
        create_model("emo_1m", img_size=256)  # stage 3 would be 16x16
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_small_maps_use_one_global_window() -> None:
    model = EMO(replace(EMO_1M, img_size=96))  # stage 3: 6x6, stage 4: 3x3
    geoms = {blk.attn.geometry for blk in (*model.stage3, *model.stage4) if blk.spec.attention}
    assert geoms == {WindowGeometry(6, 6, 1), WindowGeometry(3, 3, 1)}


# ---- zoo entries -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["emo_1m", "emo_2m", "emo_1m_fmnist"])
def test_forward_backward(name: str) -> None:
    entry = get_entry(name)
    model = create_model(name).train()
    x = torch.randn(2, entry.in_chans, entry.img_size, entry.img_size)
    out = model(x)
    assert out.shape == (2, entry.num_classes)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_emo_5m_forward() -> None:
    model = create_model("emo_5m")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_fmnist_entry() -> None:
    entry = get_entry("emo_1m_fmnist")
    got = (entry.img_size, entry.in_chans, entry.num_classes, entry.labels)
    assert got == (28, 1, 10, "fmnist")
    assert entry.default_weights == "fmnist"
    model = create_model("emo_1m_fmnist")
    res = [blk.spec.res for blk in (*model.stage3, *model.stage4) if blk.spec.attention]
    assert res[0] == 7 and res[-1] == 4  # one 7x7 window in stage 3, one 4x4 in stage 4


def test_shipped_fmnist_weights_classify() -> None:
    from edgeres.data.fmnist import load_fmnist

    model = create_model("emo_1m_fmnist", pretrained=True)  # shipped: 91.68 % on all 10k
    x, y = load_fmnist("test")
    entry = get_entry("emo_1m_fmnist")
    xs = entry.preprocess.normalize(torch.from_numpy(x[:1000].copy()).float().unsqueeze(1) / 255)
    with torch.no_grad():
        acc = (model(xs).argmax(1) == torch.from_numpy(y[:1000].copy())).float().mean().item()
    assert acc >= 0.88, f"top-1 {acc:.3f} on the first 1000 test images"


def test_drop_path_is_identity_in_eval_only() -> None:
    model = EMO(replace(EMO_1M_FMNIST, drop_path=0.5))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
    assert not torch.allclose(a, b)
    assert math.isclose(model.stage4[-1].drop_path.p, 0.5)


def test_config_needs_four_stages() -> None:
    with pytest.raises(ValueError, match="depths"):
        replace(EMO_1M, depths=(2, 2, 8))
