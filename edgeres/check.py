"""Accuracy checks of a bundle against its float reference, and the per-layer debugger.

Everything here works from the bundle alone (manifest + files), as an app would: inputs are
preprocessed float NCHW, laid out and quantized exactly as the manifest says, run on the
target's runtime, and compared with ``float.onnx`` in ONNX Runtime.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgeres.bundle import CHANNEL_SCALES, REBUILD, Bundle
from edgeres.errors import UserError

# The runtime each target runtime is checked with on this host. Vela output needs an Ethos-U;
# TFLM is bit-exact with LiteRT's reference kernels (tested), which are much faster here.
HOST_RUNTIME = {
    "onnxruntime": "onnxruntime",
    "litert-xnnpack": "litert-xnnpack",
    "litert-ref": "litert-ref",
    "tflm": "litert-ref",
    "vela": "litert-ref",
}
RUNTIMES = ("onnxruntime", "litert-xnnpack", "litert-ref", "tflm")
# Largest |code| difference of the golden outputs `edgeres check` accepts. On the runtime that
# wrote them, 1: the same kernels on another CPU may round a requantization 1 LSB apart
# (README). On another runtime (--runtime), per-layer 1-2 LSB differences compound end to end:
# 3 measured on mobilenet_v2_fmnist between XNNPACK and the reference kernels. A manifest whose
# quantization no longer fits the model is off by tens of codes.
GOLDEN_TOLERANCE = 1
GOLDEN_TOLERANCE_OTHER_RUNTIME = 4


def encode_input(x: np.ndarray, entry: dict) -> np.ndarray:
    """Float NCHW model input -> what the file takes (layout, then quantization)."""
    if entry.get("layout") == "NHWC" and x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    if entry.get("scale") is None:
        return np.ascontiguousarray(x, dtype=np.float32)
    info = np.iinfo(np.dtype(entry["dtype"]))
    q = np.round(x.astype(np.float32) / np.float32(entry["scale"])) + entry["zero_point"]
    return np.clip(q, info.min, info.max).astype(entry["dtype"])


def decode_output(y: np.ndarray, entry: dict) -> np.ndarray:
    """Raw model output -> float values in the IR's layout."""
    y = y.astype(np.float64)
    if entry.get("scale") is not None:
        y = (y - entry["zero_point"]) * entry["scale"]
    if entry.get("layout") == "NHWC" and y.ndim == 4:
        y = y.transpose(0, 3, 1, 2)
    return y


def run_model(
    bundle: Bundle, x: np.ndarray, runtime: str | None = None, threads: int = 1
) -> list[np.ndarray]:
    """Run the bundle's model on float NCHW ``x``; returns raw outputs (file dtype/layout)."""
    runtime = runtime or HOST_RUNTIME[bundle.manifest["runtime"]]
    entry = bundle.manifest["inputs"][0]
    feed = [encode_input(x, entry)]
    path = bundle.model_file
    want = entry["shape"]
    if feed[0].ndim != len(want) or any(type(w) is int and w != s for s, w in
                                        zip(feed[0].shape[1:], want[1:], strict=True)):
        raise UserError(f"{path}: input of shape {list(feed[0].shape)} does not fit the "
                        f"manifest's {list(want)} ({entry.get('layout', 'ND')})")
    if runtime == "onnxruntime":
        if path.suffix != ".onnx":
            raise UserError(f"runtime onnxruntime cannot run {path.name}; use a LiteRT runtime")
        from edgeres.runtime.onnxruntime import run_onnx

        return run_onnx(path, feed, threads=threads)
    if path.suffix != ".tflite":
        raise UserError(f"runtime {runtime} cannot run {path.name}; use --runtime onnxruntime")
    if runtime == "tflm":
        from edgeres.runtime.tflm import run_tflm

        return run_tflm(path, feed).outputs
    if runtime not in ("litert-xnnpack", "litert-ref"):
        raise UserError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIMES)})")
    from edgeres.runtime.litert import run_tflite

    kernels = "xnnpack" if runtime == "litert-xnnpack" else "ref"
    return run_tflite(path, feed, kernels=kernels, threads=threads)


def run_float(bundle: Bundle, x: np.ndarray) -> np.ndarray:
    from edgeres.runtime.onnxruntime import run_onnx

    return run_onnx(bundle.float_file, [np.ascontiguousarray(x, np.float32)])[0].astype(np.float64)


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.mean((ref - test) ** 2))
    signal = float(np.mean(ref**2))
    return math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)


@dataclass
class Agreement:
    """Quantized vs float on the same inputs.

    ``top1_agreement`` counts flips, and on a set with near ties (inputs whose float top-1
    and top-2 logits almost match) that count is a lottery: two quantizations with the same
    logits SQNR can differ by several points. ``expected_agreement`` is the same figure
    without the lottery (:func:`expected_agreement`), and ``agreement_sd`` the spread one
    measurement has around it, so a ``--min-agreement`` gate can be read at its resolution.
    """

    samples: int
    top1_agreement: float  # % of samples where both predict the same class
    sqnr_db: float  # of the logits
    float_top1: float | None = None  # % accuracy against labels, when labels exist
    quant_top1: float | None = None
    expected_agreement: float | None = None  # % under the measured noise; None: < 2 classes
    agreement_sd: float | None = None  # points: the spread of top1_agreement around it
    centre_samples: int | None = None  # view sets: one standard centre crop per image
    float_top1_centre: float | None = None  # % accuracy on those, the single-crop figure
    quant_top1_centre: float | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        return {
            k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
            for k, v in d.items()
        }


def expected_agreement(ref: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """Agreement expected at the measured noise level, and the sd of one measurement (%).

    Model: input i flips when the error of its float top-1 minus top-2 logit, ``d_i``,
    overturns the float margin ``m_i``. With ``d_i`` Gaussian and zero-mean, input i flips
    with probability ``p_i = Phi(-m_i / sigma_i)``; the expectation is ``1 - mean(p_i)`` and
    the flip count's sd ``sqrt(sum p_i (1 - p_i))``. The error is larger on uncertain inputs
    (Fashion-MNIST EMO: rms 0.29 logits at margins under 2, 0.06 at 4 to 8), so ``sigma_i``
    pools ``d**2`` over the inputs nearest in margin, a tenth of the set (at least 20); one
    variance for the whole set was 0.5 points optimistic there. Checked against brute-force
    noisy draws (tests) and five calibration draws of MobileNetV2-1.0 (BENCHMARKS.md,
    session 6). Written here because it is a few lines of arithmetic on two logit arrays.
    """
    margin, d = top2_margin_and_error(ref, test)
    return agreement_at_noise(margin, local_noise_sd(margin, d))


def top2_margin_and_error(ref: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per input: the float top-1 minus top-2 logit, and the error ``test`` adds to it."""
    rows = np.arange(len(ref))
    order = np.argsort(-ref, axis=1)[:, :2]
    top, second = order[:, 0], order[:, 1]
    err = test - ref
    return ref[rows, top] - ref[rows, second], err[rows, top] - err[rows, second]


def local_noise_sd(margin: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Per input: the rms of ``d`` over the inputs nearest in margin (a tenth, >= 20)."""
    n = len(margin)
    k = min(n, max(20, n // 10))
    order = np.argsort(margin, kind="stable")
    csum = np.concatenate([[0.0], np.cumsum(d[order] ** 2)])
    start = np.clip(np.arange(n) - k // 2, 0, n - k)  # a window of k around each rank
    sd = np.empty(n)
    sd[order] = np.sqrt((csum[start + k] - csum[start]) / k)
    return sd


def agreement_at_noise(margin: np.ndarray, sigma: np.ndarray | float) -> tuple[float, float]:
    """Expected agreement (%) and one count's sd when margin i gets an N(0, sigma_i^2) error."""
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), margin.shape)
    p = np.array([0.0 if s == 0.0 else 0.5 * math.erfc(m / (s * math.sqrt(2.0)))
                  for m, s in zip(margin, sig, strict=True)])
    return 100.0 * (1.0 - float(p.mean())), 100.0 * math.sqrt(float((p * (1 - p)).sum())) / len(p)


def compare(ref: np.ndarray, test: np.ndarray, labels: np.ndarray | None,
            centre: np.ndarray | None = None) -> Agreement:
    """Float vs quantized logits; ``centre`` picks the single-crop rows of a view set."""
    agree = float(np.mean(ref.argmax(1) == test.argmax(1))) * 100
    res = Agreement(len(ref), agree, sqnr_db(ref, test))
    if ref.ndim == 2 and ref.shape[1] >= 2:
        res.expected_agreement, res.agreement_sd = expected_agreement(ref, test)
    if labels is not None:
        res.float_top1 = float(np.mean(ref.argmax(1) == labels)) * 100
        res.quant_top1 = float(np.mean(test.argmax(1) == labels)) * 100
        if centre is not None and len(centre):
            res.centre_samples = len(centre)
            res.float_top1_centre = float(np.mean(ref[centre].argmax(1) == labels[centre])) * 100
            res.quant_top1_centre = float(np.mean(test[centre].argmax(1) == labels[centre])) * 100
    return res


def evaluate(
    bundle: Bundle,
    x: np.ndarray,
    y: np.ndarray | None,
    runtime: str | None = None,
    batch: int = 256,
    centre: np.ndarray | None = None,
) -> Agreement:
    """Float reference vs the bundle's model over ``x`` (float NCHW), in batches."""
    refs, tests = [], []
    out_entry = bundle.manifest["outputs"][0]
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        refs.append(run_float(bundle, xb))
        tests.append(decode_output(run_model(bundle, xb, runtime)[0], out_entry))
    return compare(np.concatenate(refs), np.concatenate(tests), y, centre)


@dataclass
class LayerError:
    """One runtime tensor against float. ``sqnr_db``: cumulative (every earlier layer's error
    included). ``local_sqnr_db``: the layer alone on this runtime: float.onnx's ops recomputed
    from the runtime's own values of the tensors it reads, so only the error the runtime adds
    here counts (``None``: the tensor reads nothing measured, e.g. the model input)."""

    tensor: str
    sqnr_db: float
    local_sqnr_db: float | None = None


def _db(v: float | None) -> float | None:
    return round(v, 2) if v is not None and math.isfinite(v) else None


@dataclass
class LayerReport:
    """Per-layer float-vs-int SQNR along the graph as the runtime computes it, and the layer
    that adds the most error there (lowest local SQNR): a cumulative minimum only shows where
    error has piled up. ``sim_local_db`` is the simulation's local figure for the same layer
    (report.json), so a layer the runtime computes worse than the plan says stands out."""

    layers: list[LayerError] = field(default_factory=list)
    worst_local: str | None = None
    worst_local_db: float | None = None
    sim_local_db: float | None = None

    def to_json(self) -> dict:
        return {
            "worst_local": self.worst_local,
            "worst_local_db": _db(self.worst_local_db),
            "sim_local_db": _db(self.sim_local_db),
            "layers": [{"tensor": t.tensor, "sqnr_db": _db(t.sqnr_db),
                        "local_sqnr_db": _db(t.local_sqnr_db)} for t in self.layers],
        }


def _measured_inputs(model: onnx.ModelProto, measured: set[str]) -> dict[str, set[str]]:
    """For each measured tensor, the measured tensors its value is computed from, walking
    float.onnx's edges back through intermediate ops (a Conv before its Clip, ...)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out: dict[str, set[str]] = {}
    for t in measured:
        found: set[str] = set()
        stack = list(producer[t].input) if t in producer else []
        seen: set[str] = set()
        while stack:
            u = stack.pop()
            if u in seen:
                continue
            seen.add(u)
            if u in measured:
                found.add(u)
            elif u in producer:
                stack.extend(producer[u].input)
        out[t] = found
    return out


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """Expose the named tensors of ``model`` as extra graph outputs; returns the ones it has."""
    known = {o for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    wanted = [n for n in names if n in known and n not in outputs]
    for n in wanted:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    return wanted


def _float_intermediates(bundle: Bundle, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Every named tensor of float.onnx, exposed as extra outputs and run in ORT."""
    from edgeres.runtime.onnxruntime import run_onnx

    model = onnx.load(bundle.float_file)
    _with_outputs(model, names)
    outs = run_onnx(model.SerializeToString(), [x.astype(np.float32)])
    got = dict(zip([o.name for o in model.graph.output], outs, strict=True))
    return {model.graph.input[0].name: x, **got}  # the input too: the device quantizes it


def _tflite_intermediates(bundle: Bundle, x: np.ndarray, order: list[str]) -> dict[str, np.ndarray]:
    """Every IR tensor LiteRT's reference kernels kept, dequantized (NHWC as the file has it)."""
    from edgeres.runtime.litert import make_interpreter

    it = make_interpreter(bundle.model_file, "ref", keep_all=True)
    it.set_tensor(it.get_input_details()[0]["index"], encode_input(x, bundle.manifest["inputs"][0]))
    it.invoke()
    out = {}
    for d in it.get_tensor_details():
        if d["name"] not in order:
            continue
        try:
            raw = it.get_tensor(d["index"]).astype(np.float64)
        except ValueError:
            continue
        scale, zp = d["quantization"]
        out[d["name"]] = (raw - zp) * scale if scale else raw
    return out


def _onnx_intermediates(bundle: Bundle, x: np.ndarray, order: list[str]) -> dict[str, np.ndarray]:
    """Every IR tensor's DequantizeLinear output in the QDQ model, run in ONNX Runtime. Exposing
    a tensor keeps ORT from fusing its Q/DQ pair into an integer kernel, so these are the QDQ
    semantics (what the integer kernels approximate to 1 LSB), not the fused kernels' bits."""
    from edgeres.runtime.onnxruntime import run_onnx

    model = onnx.load(bundle.model_file)
    names = {f"{t}_dequantized": t for t in order}
    _with_outputs(model, list(names))
    feed = encode_input(x, bundle.manifest["inputs"][0])
    outs = run_onnx(model.SerializeToString(), [feed])
    got = dict(zip([o.name for o in model.graph.output], outs, strict=True))
    return {names[k]: v.astype(np.float64) for k, v in got.items() if k in names}


# What np.load and reading an .npz member raise on a truncated, foreign or pickled file.
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def read_npz(path: Path, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of a bundle's .npz as numbers, or a one-line UserError naming the file:
    a tampered golden file must not end ``check`` in a traceback."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise ValueError(f"it has no array '{missing[0]}'")
            arrays = {k: data[k] for k in data.files}
    except NPZ_ERRORS as exc:
        raise UserError(f"{path}: not a readable .npz of the bundle "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                        f"{REBUILD}") from exc
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise UserError(f"{path}: array '{k}' holds {a.dtype} values, not numbers; {REBUILD}")
    return arrays


def input_shape_nchw(entry: dict) -> list[int | None]:
    """The float NCHW shape of a model input (what golden ``x`` and ``--data`` hold), None
    where the manifest leaves a dimension open."""
    shape = [d if type(d) is int else None for d in entry["shape"]]
    if entry.get("layout") == "NHWC" and len(shape) == 4:
        shape = [shape[0], shape[3], shape[1], shape[2]]
    return shape


def load_golden(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """golden.npz's inputs ``x`` (float NCHW) and raw outputs ``y_raw``, checked against the
    manifest's first input so a wrong file fails here, naming it, not inside the runtime."""
    path = bundle.root / "golden" / "golden.npz"
    if not path.is_file():
        raise UserError(f"bundle {bundle.root} has no golden/golden.npz; {REBUILD}")
    g = read_npz(path, ("x", "y_raw"))
    x, y = g["x"], g["y_raw"]
    want = input_shape_nchw(bundle.manifest["inputs"][0])
    fits = x.ndim == len(want) and all(w is None or w == s
                                       for s, w in zip(x.shape[1:], want[1:], strict=True))
    if not fits:
        shown = "[" + ", ".join(["N", *("N" if w is None else str(w) for w in want[1:])]) + "]"
        raise UserError(f"{path}: 'x' has shape {list(x.shape)}, but the manifest's input "
                        f"takes {shown} (float NCHW); {REBUILD}")
    if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise UserError(f"{path}: 'x' must hold finite floats; {REBUILD}")
    if len(x) == 0 or y.ndim == 0 or len(y) != len(x):
        raise UserError(f"{path}: 'x' has {len(x)} samples and 'y_raw' "
                        f"{len(y) if y.ndim else 0}; both need the same number, at least 1; "
                        f"{REBUILD}")
    return x, y


def channel_divisors(bundle: Bundle) -> dict[str, np.ndarray]:
    """Per-channel divisors of the tensors activation smoothing rescaled (the runtime's tensor
    is the float model's divided channel-wise by them); empty for unsmoothed bundles."""
    path = bundle.root / "golden" / CHANNEL_SCALES
    if not path.is_file():
        return {}
    out = {k: a.astype(np.float64) for k, a in read_npz(path).items()}
    for k, a in out.items():
        if a.ndim != 1 or not a.size or not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise UserError(f"{path}: '{k}' must be one positive divisor per channel, not an "
                            f"array of shape {list(a.shape)}; {REBUILD}")
    return out


def missing_channel_scales(bundle: Bundle) -> bool:
    """True for a bundle of a smoothed plan written before bundles carried the divisors: its
    runtime tensors cannot be compared with float.onnx's layer by layer."""
    report = bundle.root / "report.json"
    if (bundle.root / "golden" / CHANNEL_SCALES).is_file() or not report.is_file():
        return False
    try:
        return bool(json.loads(report.read_text()).get("smooth", {}).get("smoothed"))
    except (OSError, ValueError):
        return False


def _local_references(model: onnx.ModelProto, values: dict[str, np.ndarray],
                      inputs: dict[str, set[str]]) -> dict[str, np.ndarray]:
    """Each measured tensor recomputed in float from the runtime's own values of the measured
    tensors it reads: float.onnx's subgraph between them (onnx.utils.Extractor), run in ORT.
    Tensors whose subgraph needs a value the runtime does not expose are left out."""
    from onnx.utils import Extractor

    from edgeres.runtime.onnxruntime import run_onnx

    extractor = Extractor(onnx.shape_inference.infer_shapes(model))
    out: dict[str, np.ndarray] = {}
    for t, reads in inputs.items():
        names = sorted(reads)
        if not names or t not in values:
            continue
        try:
            sub = extractor.extract_model(names, [t])
            got = run_onnx(sub.SerializeToString(),
                           [values[n].astype(np.float32) for n in names])[0]
        except Exception:  # noqa: BLE001 - Extractor and ORT raise untyped failures; one
            continue  # layer's subgraph that cannot be cut out or run loses its local figure
        if got.shape == values[t].shape:
            out[t] = got.astype(np.float64)
    return out


def _runtime_values(bundle: Bundle, x: np.ndarray, order: list[str]
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The runtime's tensors in float.onnx's layout and channels (NCHW where float.onnx has
    it, smoothing undone), and float.onnx's own values of the same tensors."""
    read = {".tflite": _tflite_intermediates, ".onnx": _onnx_intermediates}.get(
        bundle.model_file.suffix)
    if read is None:
        raise UserError(f"the per-layer debugger reads .tflite or .onnx models, not "
                        f"{bundle.model_file.name}")
    runtime_t = read(bundle, x, order)
    floats = _float_intermediates(bundle, x, list(runtime_t))
    divisors = channel_divisors(bundle)
    values, refs = {}, {}
    for name in order:
        if name not in runtime_t or name not in floats:
            continue
        value, ref = runtime_t[name], floats[name].astype(np.float64)
        if value.ndim == 4 and value.shape != ref.shape:
            value = value.transpose(0, 3, 1, 2)
        if value.shape != ref.shape:
            continue
        if name in divisors and divisors[name].shape != value.shape[1:2]:
            raise UserError(f"{bundle.root / 'golden' / CHANNEL_SCALES}: '{name}' has "
                            f"{divisors[name].size} divisors, but the tensor has "
                            f"{value.shape[1] if value.ndim > 1 else 0} channels; {REBUILD}")
        if name in divisors:  # a smoothed tensor: back to the original model's channels
            value = value * divisors[name].reshape([1, -1] + [1] * (value.ndim - 2))
        values[name], refs[name] = value, ref
    return values, refs


def _sim_local(bundle: Bundle) -> dict[str, float]:
    """The simulation's local SQNR per layer from report.json (empty if it has none)."""
    try:
        rows = json.loads((bundle.root / "report.json").read_text()).get("layer_sqnr", [])
    except (OSError, ValueError):
        return {}
    return {r["layer"]: r["local_sqnr_db"] for r in rows
            if r.get("local_sqnr_db") is not None and not r.get("partial")}


def layer_report(bundle: Bundle, x: np.ndarray) -> LayerReport:
    """SQNR of every quantized tensor the runtime exposes against the float graph, cumulative
    and local (see :class:`LayerError`), for the first input of ``x``.

    The layer with the lowest local SQNR is named: where the runtime adds the most error,
    so where to look first (ignore list, per-channel, REx there, or a kernel to report).
    """
    values, floats = _runtime_values(bundle, x[:1], bundle.manifest.get("tensor_order", []))
    model = onnx.load(bundle.float_file)
    local = _local_references(model, values, _measured_inputs(model, set(values)))
    report = LayerReport()
    for name, value in values.items():
        own = sqnr_db(local[name], value) if name in local else None
        report.layers.append(LayerError(name, sqnr_db(floats[name], value), own))
    ranked = [e for e in report.layers if e.local_sqnr_db is not None]
    if ranked:
        worst = min(ranked, key=lambda e: e.local_sqnr_db)
        report.worst_local, report.worst_local_db = worst.tensor, worst.local_sqnr_db
        report.sim_local_db = _sim_local(bundle).get(worst.tensor)
    return report


def golden_tolerance(bundle: Bundle, runtime: str | None = None) -> int:
    """The code difference :func:`check_golden` may find on ``runtime`` (see GOLDEN_TOLERANCE)."""
    written = HOST_RUNTIME[bundle.manifest["runtime"]]  # convert writes them with this one
    used = HOST_RUNTIME.get(runtime or written, runtime)
    return GOLDEN_TOLERANCE if used == written else GOLDEN_TOLERANCE_OTHER_RUNTIME


def check_golden(bundle: Bundle, runtime: str | None = None) -> float:
    """Max |difference| in output codes between the runtime and the bundle's golden outputs."""
    from edgeres.data.folders import load_npz  # noqa: F401  (keeps data deps optional)

    x, expected = load_golden(bundle)
    out = run_model(bundle, x, runtime)[0]
    if out.shape != expected.shape:
        raise UserError(
            f"{bundle.root / 'golden' / 'golden.npz'}: golden output has shape "
            f"{list(expected.shape)} ('y_raw')"
            f", the model gives {list(out.shape)}: the golden file does not belong to this "
            f"model; {REBUILD}"
        )
    step = output_code_step(bundle)
    if step is None:  # integer outputs: codes already
        return float(np.max(np.abs(out.astype(np.int64) - expected.astype(np.int64))))
    return float(np.max(np.abs(out.astype(np.float64) - expected.astype(np.float64))) / step)


def output_code_step(bundle: Bundle) -> float | None:
    """None for an integer first output; for a float one, the size of one of its codes: the
    scale of the DequantizeLinear that writes it in a QDQ .onnx (1.0 where none does, so
    the difference is read in float units). Golden drift is then counted in codes either
    way, not truncated to whole logits."""
    entry = bundle.manifest["outputs"][0]
    if entry["dtype"] != "float32":
        return None
    if bundle.model_file.suffix != ".onnx":
        return 1.0
    graph = onnx.load(bundle.model_file, load_external_data=False).graph
    writer = next((n for n in graph.node if graph.output[0].name in n.output), None)
    if writer is None or writer.op_type != "DequantizeLinear":
        return 1.0
    init = next((t for t in graph.initializer if t.name == writer.input[1]), None)
    if init is None:
        return 1.0
    scale = onnx.numpy_helper.to_array(init).astype(np.float64)
    return float(scale.max()) if scale.size and scale.max() > 0 else 1.0


def bundle_root(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"bundle '{p}' does not exist")
    return p
