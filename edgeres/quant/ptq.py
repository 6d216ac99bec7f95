"""Post-training quantization: plan, calibrate, quantize weights, correct biases -> QModel.

>>> from edgeres import create_model, load_target
>>> import torch
>>> qm = quantize(create_model("mobilenet_v2_fmnist"), PTQConfig(), load_target("arm-cpu-tflite"),
...               torch.randn(8, 1, 28, 28))
>>> sorted(qm.act_qparams)[:1]
['features.0.0']
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import Tensor, nn

from edgeres.config import PTQConfig
from edgeres.errors import UserError
from edgeres.graph.capture import capture
from edgeres.graph.ir import OPS, STATS_DTYPE, Graph, Node, run_graph
from edgeres.graph.rewrites import lower_for_target
from edgeres.qtypes import QParams, QSpec, bias_qparams
from edgeres.quant.observers import TensorStats, choose_range
from edgeres.quant.plan import Decision, QuantPlan, make_plan
from edgeres.quant.primitives import qparams_from_range, quantize_weight, weight_qparams
from edgeres.quant.qmodel import QModel, QuantWeight
from edgeres.targets import Target

if TYPE_CHECKING:
    from edgeres.graph.smooth import SmoothReport


def check_calibration_data(x: Tensor, graph: Graph) -> None:
    """Reject empty, non-finite or mis-shaped calibration data with a clear message."""
    expected = graph.inputs[0].shape
    if x.numel() == 0 or x.shape[0] == 0:
        raise UserError("calibration data is empty: give at least one sample")
    if x.dim() != len(expected) or tuple(x.shape[1:]) != tuple(expected[1:]):
        raise UserError(
            f"calibration data has shape {list(x.shape)}; the model expects "
            f"[N, {', '.join(map(str, expected[1:]))}] (check channels and image size)"
        )
    if not torch.isfinite(x).all():
        raise UserError("calibration data contains NaN or Inf values")


def _batches(x: Tensor, size: int) -> Iterable[Tensor]:
    for i in range(0, x.shape[0], size):
        yield x[i : i + size]


def collect_stats(
    graph: Graph, plan: QuantPlan, x: Tensor, cfg: PTQConfig, progress: bool = False,
    per_channel: Collection[str] = (), finalize: bool = True,
) -> dict[str, TensorStats]:
    """Observe every planned tensor in one pass: ranges, value samples, per-channel means;
    for the ``per_channel`` tensors also channel ranges (unfinalized stats can then be
    rescaled channel-wise, see :meth:`TensorStats.divided`)."""
    stats = {t: TensorStats(per_channel=t in per_channel)
             for t in [*plan.act_specs, *(t for t in per_channel if t not in plan.act_specs)]}
    # weighted layers' inputs (bias correction) and the model's outputs (output bias
    # correction: the float side of its mean error, so it needs no float pass of its own)
    wants_mean = {n.inputs[0] for n in graph.nodes if n.name in plan.weight_specs}
    wants_mean.update(graph.outputs)
    sample = cfg.act_observer != "minmax"
    gen = torch.Generator().manual_seed(0)
    batches = list(_batches(x, cfg.calib_batch))

    def observe(name: str, value: Tensor) -> None:
        s = stats.get(name)
        if s is None:
            return
        s.update_range(value)
        if sample:
            s.update_samples(value, gen)
        if name in wants_mean:
            s.update_channel_mean(value)

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("calibrating", total=len(batches))
        for xb in batches:
            run_graph(graph, xb, dtype=STATS_DTYPE, observe=observe)
            bar.advance(task)
    if finalize:
        for s in stats.values():
            s.finalize()
    return stats


_RANGE_RULES = {  # how each observer sets a tensor's range, for the plan report
    "percentile": "{pct}th percentile of the calibration values",
    "minmax": "calibration min-max",
    "mse": "the clip with the least expected squared error",
    "entropy": "KL-optimal |x| threshold (TensorRT's calibration)",
}


def activation_qparams(
    plan: QuantPlan, stats: dict[str, TensorStats], cfg: PTQConfig,
    outputs: Collection[str] = (), progress: bool = False, inputs: Collection[str] = (),
) -> dict[str, QParams]:
    """Every planned tensor's QParams; ``outputs`` (the model's) get min-max x headroom and
    ``inputs`` (the model's) min-max: a clipped pixel is information no layer can get back,
    and an input's range is bounded by its preprocessing anyway (only observers that clip,
    such as entropy, change by this). (The entropy search takes ~0.1 s a tensor, hence the
    progress bar.)"""
    out: dict[str, QParams] = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"{cfg.act_observer} ranges", total=len(plan.act_specs))
        for t, spec in plan.act_specs.items():
            bar.advance(task)
            if t in plan.fixed:
                out[t] = plan.fixed[t]
                continue
            if t in outputs:
                lo, hi = stats[t].lo * cfg.output_headroom, stats[t].hi * cfg.output_headroom
            elif t in inputs:
                lo, hi = stats[t].lo, stats[t].hi
            else:
                lo, hi = choose_range(stats[t], cfg.act_observer, spec.qmax - spec.qmin + 1,
                                      cfg.percentile)
            out[t] = qparams_from_range(spec, lo, hi)
    for t, src in plan.shared.items():  # in graph order, so chains resolve front to back
        out[t] = out[src]
    return out


def weight_shift(node: Node, dw: Tensor, in_mean: Tensor) -> Tensor:
    """Mean output shift caused by the weight error ``dw`` for an input with channel means."""
    if node.op == "linear":
        return dw @ in_mean
    groups = node.attrs["groups"]
    per_out = dw.sum(dim=(2, 3))  # [O, I/groups]
    in_per_group = per_out.shape[1]
    out_per_group = per_out.shape[0] // groups
    means = in_mean.reshape(groups, in_per_group).repeat_interleave(out_per_group, dim=0)
    return (per_out * means).sum(dim=1)


def quantize_node_weights(
    node: Node,
    spec: QSpec,
    in_qp: QParams,
    method: str,
    in_mean: Tensor | None,
    given: QuantWeight | None = None,
) -> QuantWeight:
    """Integer weight codes, optionally bias-corrected, and int32 bias codes.

    ``given`` weights (e.g. REx terms) are used as they are: no re-quantization and no bias
    correction; only the bias is quantized, on the input x weight scale grid.
    """
    w = node.params["weight"].detach().to(torch.float64)
    if given is not None:
        qp, codes, in_mean = given.qparams, given.codes, None
    else:
        qp = weight_qparams(w, spec, method)
        codes = quantize_weight(w, qp)
    bias = node.params["bias"].detach().to(torch.float64)
    if in_mean is not None:
        dq = qp.dequantize(torch.from_numpy(codes.astype(np.int64)))
        bias = bias - weight_shift(node, dq - w, in_mean)
    bqp = bias_qparams(in_qp, qp)
    bscale = torch.from_numpy(bqp.scale.astype(np.float64))
    bias_codes = torch.round(bias / bscale).clamp(-(2**31), 2**31 - 1).to(torch.int64).numpy()
    return QuantWeight(codes, qp, bias_codes.astype(np.int32), bqp)


def quantize_graph(
    graph: Graph,
    cfg: PTQConfig,
    target: Target,
    calib: Tensor,
    progress: bool = False,
    weight_overrides: dict[str, QuantWeight] | None = None,
) -> QModel:
    """PTQ of a captured graph. See :func:`quantize` for a module.

    ``weight_overrides`` maps node names to pre-quantized weights used as given (REx terms).
    """
    check_calibration_data(calib, graph)
    started = time.perf_counter()
    graph = lower_for_target(graph, target.ops.lowering)
    plan = make_plan(graph, target, cfg.weight_bits, cfg.act_bits, cfg.per_channel, cfg.ignore)
    if cfg.input_range is not None:
        fix_input_range(graph, plan, cfg.input_range)
    asked = cfg.smooth_alpha is not None
    cfg = replace(cfg, smooth_alpha=smooth_alpha_for(cfg, plan, bool(weight_overrides)))
    plan.report.append(Decision("activation ranges", _RANGE_RULES[cfg.act_observer].format(
        pct=cfg.percentile), f"model outputs: calibration min-max x {cfg.output_headroom}, "
        "never clipped (a clipped top logit ties with its neighbours); model inputs: "
        "calibration min-max (a clipped pixel cannot be recovered)"))
    if cfg.smooth_alpha > 0:  # a decision the report should explain, like the plan's own
        plan.report.append(Decision("activations", f"smoothed, alpha {cfg.smooth_alpha}", (
            "asked for" if asked else "the default for W8A8 plans with per-channel weights "
            "(channel outliers move into the weights; the float function is unchanged)")))
    smooth_report = None
    if cfg.smooth_alpha > 0:
        if weight_overrides:
            raise UserError("smooth_alpha cannot be combined with given weights (REx terms): "
                            "set smooth_alpha=0 for REx")
        graph, stats, smooth_report = _smoothed_stats(graph, plan, calib, cfg, progress)
    else:
        stats = collect_stats(graph, plan, calib, cfg, progress)
    act_qp = activation_qparams(plan, stats, cfg, outputs=graph.outputs, progress=progress,
                                inputs=[i.name for i in graph.inputs])
    weights: dict[str, QuantWeight] = {}
    for node in graph.nodes:
        spec = plan.weight_specs.get(node.name)
        if spec is None:
            continue
        mean = stats[node.inputs[0]].channel_mean() if cfg.bias_correction else None
        weights[node.name] = quantize_node_weights(
            node, spec, act_qp[node.inputs[0]], cfg.weight_observer, mean,
            (weight_overrides or {}).get(node.name),
        )
    if cfg.adaround_iters:
        from edgeres.quant.adaround import adaround

        means = ({n.inputs[0]: stats[n.inputs[0]].channel_mean() for n in graph.nodes
                  if n.name in weights} if cfg.bias_correction else None)
        weights = adaround(QModel(graph, act_qp, weights), calib, cfg.adaround_iters,
                           skip=frozenset(weight_overrides or ()), in_means=means,
                           progress=progress)
    recon_report = None
    if cfg.reconstruct_iters:
        from edgeres.quant.reconstruct import reconstruct

        t0 = time.perf_counter()
        rq = reconstruct(QModel(graph, act_qp, weights), calib, cfg.reconstruct_iters,
                         shared=plan.shared, frozen=frozenset(plan.fixed),
                         skip=frozenset(weight_overrides or ()), progress=progress)
        act_qp, weights = rq.act_qparams, rq.weights
        recon_report = {"iters": cfg.reconstruct_iters, "blocks": rq.meta["blocks"],
                        "seconds": round(time.perf_counter() - t0, 3)}
    output_bias = None
    if cfg.output_bias_correction:
        output_bias = correct_output_bias(
            QModel(graph, act_qp, weights), calib, cfg.calib_batch,
            float_mean=stats[graph.outputs[0]].channel_mean() if graph.outputs[0] in stats
            else None)
    meta = {
        "plan": plan.to_json(),
        "config": cfg.to_json(),
        "target": target.name,
        "lowering": target.ops.lowering.to_json(),
        "uint8_weight_storage": target.weights.uint8_storage,  # read by the ONNX exporter
        "calibration_samples": int(calib.shape[0]),
        **({"smooth": smooth_report.to_json(),
            "smooth_divisors": smooth_report.divisors} if smooth_report else {}),
        **({"reconstruct": recon_report} if recon_report else {}),
        **({"output_bias_correction": output_bias} if output_bias else {}),
        "quantize_seconds": round(time.perf_counter() - started, 3),
    }
    qm = QModel(graph, act_qp, weights, scheme="ptq", meta=meta)
    qm.plan = plan  # type: ignore[attr-defined]
    return qm


def fix_input_range(graph: Graph, plan: QuantPlan, bounds: tuple[float, float]) -> None:
    """Give the model input the QParams of ``bounds`` (a pixels-in model: one code per pixel
    value) instead of calibrated ones; every step after calibration keeps them as given."""
    name = graph.inputs[0].name
    spec = plan.act_specs.get(name)
    if spec is None:
        raise UserError(f"input_range: the model input '{name}' is not quantized in this plan")
    if spec.symmetric:
        raise UserError(f"input_range: {plan.target} quantizes activations symmetrically, so "
                        f"zero must be code 0 and [{bounds[0]:g}, {bounds[1]:g}] cannot be one "
                        "code per pixel; use --input normalized for this target")
    plan.fixed[name] = qparams_from_range(spec, *bounds)
    plan.report.append(Decision(name, f"fixed range [{bounds[0]:g}, {bounds[1]:g}]",
                                "the model takes pixels: every camera byte is exactly one code"))


AUTO_SMOOTH_ALPHA = 0.5


def smooth_alpha_for(cfg: PTQConfig, plan: QuantPlan, given_weights: bool) -> float:
    """``cfg.smooth_alpha``, or for ``None`` SmoothQuant's 0.5 where smoothing was measured to
    help every zoo model (8-bit weights and activations, per-channel weights throughout) and
    0 elsewhere (see :class:`PTQConfig`)."""
    if cfg.smooth_alpha is not None:
        return cfg.smooth_alpha
    specs = plan.weight_specs.values()
    measured = (cfg.weight_bits == 8 and cfg.act_bits == 8 and not cfg.adaround_iters
                and bool(specs) and all(s.per_channel for s in specs))
    return AUTO_SMOOTH_ALPHA if measured and not given_weights else 0.0


def _smoothed_stats(
    graph: Graph, plan: QuantPlan, calib: Tensor, cfg: PTQConfig, progress: bool
) -> tuple[Graph, dict[str, TensorStats], SmoothReport]:
    """Smooth ``graph`` and calibrate it in one pass over the data: the pass that measures
    the channel ranges smoothing balances also keeps each sample's channel, so the smoothed
    tensors' statistics are the measured ones divided channel-wise by their divisors (the
    float function, and so every other tensor, is unchanged)."""
    from edgeres.graph.smooth import domain_tensors, smooth_with_ranges

    wanted = domain_tensors(graph)
    stats = collect_stats(graph, plan, calib, cfg, progress, per_channel=wanted,
                          finalize=False)
    per_tensor = {n for n, s in plan.weight_specs.items() if not s.per_channel}
    absmax = {t: stats[t].channel_absmax() for t in wanted}
    graph, report, divisors = smooth_with_ranges(graph, absmax, cfg.smooth_alpha, per_tensor)
    stats = {t: st.divided(divisors[t]) if t in divisors else st for t, st in stats.items()}
    for st in stats.values():
        st.finalize()
    return graph, stats, report


def correct_output_bias(
    qm: QModel, calib: Tensor, batch: int, float_mean: Tensor | None = None
) -> dict | None:
    """Take the mean logit error of the whole integer network out of the classifier's bias.

    Activation rounding and clipping shift some logits on average (MobileNetV2-1.0: the
    per-class mean error measured on photo crops correlates 0.75-0.8 with the one on ImageNet
    views), and a class whose logit sits too high wins near ties it should lose. Subtracting
    that mean, measured on the calibration data, from the int32 bias of the layer that writes
    the model's output costs nothing at run time. Per-layer empirical bias correction (Nagel
    et al.) is the general form; it overfitted the photo set (BENCHMARKS.md), so only the
    output layer, whose error is the one that decides, is corrected. Edits ``qm.weights``;
    returns what it did, or None when the output is not written by a conv / linear.
    ``float_mean``: the float output's per-channel mean over ``calib`` if the calibration
    pass measured it (it does); otherwise a float pass here computes it.
    """
    graph = qm.graph
    if len(graph.outputs) != 1:
        return None
    node = next((n for n in graph.nodes if n.output == graph.outputs[0]), None)
    if node is None or node.name not in qm.weights or node.op not in ("linear", "conv2d"):
        return None
    qw = qm.weights[node.name]
    if qw.bias_codes is None or qw.bias_qparams is None:
        return None
    params = qm.param_overrides()
    sim_mean = _output_channel_mean(graph, calib, batch, qm.act_qparams, params)
    if float_mean is None:
        float_mean = _output_channel_mean(graph, calib, batch)
    mean_err = (sim_mean - float_mean.to(torch.float64)).numpy()  # per output channel
    step = np.broadcast_to(qw.bias_qparams.scale.astype(np.float64), mean_err.shape)
    shift = np.round(mean_err / step).astype(np.int64)
    codes = np.clip(qw.bias_codes.astype(np.int64) - shift, -(2**31), 2**31 - 1)
    qm.weights[node.name] = QuantWeight(qw.codes, qw.qparams, codes.astype(np.int32),
                                        qw.bias_qparams)
    return {"layer": node.name, "mean_abs_shift": round(float(np.abs(mean_err).mean()), 5),
            "max_abs_shift": round(float(np.abs(mean_err).max()), 5)}


def _output_channel_mean(
    graph: Graph, x: Tensor, batch: int, act_qparams: dict[str, QParams] | None = None,
    params: dict[str, dict[str, Tensor]] | None = None,
) -> Tensor:
    """Per-channel mean (over samples and positions) of the model's output on ``x``, in
    float64 like the calibration statistics; quantized when ``act_qparams`` are given."""
    stats = TensorStats()
    for xb in _batches(x, batch):
        out = run_graph(graph, xb, act_qparams, params, dtype=STATS_DTYPE)[graph.outputs[0]]
        stats.update_channel_mean(out)
    mean = stats.channel_mean()
    assert mean is not None  # at least one batch of a tensor with a channel axis
    return mean


def quantize(
    model: nn.Module | Graph, cfg: PTQConfig, target: Target, calib: Tensor, progress: bool = False
) -> QModel:
    """Quantize ``model`` for ``target`` with ``cfg``, calibrated on ``calib`` (NCHW floats)."""
    graph = model if isinstance(model, Graph) else capture(model, calib[:1])
    return quantize_graph(graph, cfg, target, calib, progress)


@dataclass(frozen=True)
class LayerError:
    """One layer of the simulation against float.

    ``sqnr_db``: its output against float with every earlier layer's error included (what the
    device computes there). ``local_sqnr_db``: the layer alone, its inputs the float values
    rounded onto their grids, against the same layer in float, so only its own weights and
    output rounding count: where error enters rather than where it has piled up (``inf``
    for a layer that adds none: a reshape, a layer kept in float). ``clipped_pct``: the share
    of the float output beyond the range its activation can represent (``None``: not
    quantized)."""

    layer: str
    sqnr_db: float
    clipped_pct: float | None
    local_sqnr_db: float = float("inf")
    partial: bool = False  # a REx term: only the sum of a layer's terms is that layer

    def to_json(self) -> dict:
        def db(v: float) -> float | None:
            return round(v, 2) if np.isfinite(v) else None

        return {"layer": self.layer, "sqnr_db": db(self.sqnr_db),
                "local_sqnr_db": db(self.local_sqnr_db),
                "clipped_pct": None if self.clipped_pct is None else round(self.clipped_pct, 3),
                **({"partial": True} if self.partial else {})}


def _clipped_pct(value: Tensor, qp: QParams | None) -> float | None:
    """Share (%) of ``value`` more than half a step outside what ``qp`` represents."""
    if qp is None or qp.spec.per_channel:
        return None
    half = float(qp.scale) / 2
    lo = float(qp.dequantize(torch.tensor(qp.spec.qmin))) - half
    hi = float(qp.dequantize(torch.tensor(qp.spec.qmax))) + half
    return 100.0 * float(((value < lo) | (value > hi)).float().mean())


def layer_errors(qmodel: QModel, x: Tensor) -> list[LayerError]:
    """Per layer (the model's inputs first), on inputs ``x``: SQNR (dB) of the simulation
    against the float graph, cumulative and local (see :class:`LayerError`), and the share of
    float output values clipped. A low SQNR with clipping points at the range the observer
    chose; without it, at the rounding."""
    from edgeres.graph.rex_expand import is_partial_term
    from edgeres.quant.primitives import sqnr_db

    ref = run_graph(qmodel.graph, x, keep=True)
    sim = qmodel.simulate(x, keep=True)
    rows = [LayerError(t.name, sqnr_db(ref[t.name], sim[t.name]),
                       _clipped_pct(ref[t.name], qmodel.act_qparams.get(t.name)),
                       sqnr_db(ref[t.name], sim[t.name]))  # the input's own quantization
            for t in qmodel.graph.inputs]
    params, acts = qmodel.param_overrides(), qmodel.act_qparams
    for node in qmodel.graph.nodes:
        value, qp = ref[node.output], acts.get(node.output)
        # its inputs rounded once onto their own grids (error that entered upstream), then
        # the layer in float against the layer as the integer model runs it
        on_grid = [acts[i].fake_quantize(ref[i]) if i in acts else ref[i] for i in node.inputs]
        exact = OPS[node.op](node, on_grid, {k: v.double() for k, v in node.params.items()})
        own = {k: v.double() for k, v in params.get(node.name, node.params).items()}
        alone = OPS[node.op](node, on_grid, own)
        alone = qp.fake_quantize(alone) if qp is not None else alone
        rows.append(LayerError(node.name, sqnr_db(value, sim[node.output]),
                               _clipped_pct(value, qp), sqnr_db(exact, alone),
                               is_partial_term(node.name)))
    return rows


__all__ = [
    "quantize", "quantize_graph", "layer_errors", "LayerError", "check_calibration_data", "F",
]
