#!/usr/bin/env python3
"""edgeres device-side runner: time a .tflite/.onnx model, or run it on given inputs.

Self-contained on purpose: it is copied to a Linux board (Raspberry Pi, i.MX, Jetson, an
STM32MP...) and run by the board's own python, so it needs only the standard library, numpy
and one runtime: ``ai_edge_litert`` (or the older ``tflite_runtime``) for .tflite, ``onnxruntime``
for .onnx. edgeres runs the same script on the host for local benchmarks, so host and device
numbers come from the same code.

Usage::

    python3 bench_runner.py MODEL [--runtime auto|litert|onnxruntime]
        [--kernels xnnpack|ref|builtin] [--threads 1,2,4] [--warmup 5] [--runs 50] [--seed 0]
    python3 bench_runner.py MODEL --check INPUTS.npz --out OUTPUTS.npz [--runtime ...]
        [--kernels ...] [--threads 1]

Benchmark mode (default): random inputs of each input's dtype and shape (integers over the
dtype's full range, floats standard normal; dynamic ONNX dimensions become 1), ``--warmup``
untimed inferences, then ``--runs`` timed ones (``time.perf_counter_ns`` around each invoke).
Each thread count is measured in a fresh child process, so that its memory figure is its own.

Memory: ``peak_rss_delta_bytes`` is the process's resident-set high-water mark after loading
the model and running it, minus its resident set once numpy and the runtime are imported (and
the inputs made): what the model costs an app that already links the runtime (weights,
arena, thread pools, mapped model pages). On Linux the high-water mark is reset after the
imports by writing 5 to /proc/self/clear_refs, then read as VmHWM (``rss_method: "vmhwm"``);
elsewhere the ``getrusage`` maximum-RSS difference is used (``"getrusage"``, a lower bound:
a transient peak during the imports hides part of the model's).

Check mode (``--check``): INPUTS.npz holds one array per model input, keyed by the input's
name or ``input_<i>`` / ``arr_<i>`` in input order, with the model's dtype and layout. When
the model's batch is 1 and the arrays hold N samples, the model runs once per sample. The
outputs are written to ``--out`` as ``output_<i>`` in output order (a temp file, then
renamed). Names and shapes are in the JSON line.

Output: one JSON line on stdout, starting ``{"schema": "edgeres.bench_runner/1"``; on failure
it carries ``"error"`` and the exit code is 3 (2 for bad command-line arguments).
"""

# Runs on the board's own python (3.8 or newer): no zip(strict=...), no match statements.
# ruff: noqa: B905

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time

SCHEMA = "edgeres.bench_runner/1"
EXIT_ERROR = 3


class RunnerError(Exception):
    """A failure the host should show the user verbatim."""


def emit(payload: dict) -> None:
    """The one JSON line the host parses; ``schema`` first so it can be found in any log."""
    sys.stdout.write(json.dumps({"schema": SCHEMA, **payload}) + "\n")
    sys.stdout.flush()


# -- memory -----------------------------------------------------------------------------------


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_bytes() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


class RssMeter:
    """Peak resident memory from now on (see the module docstring)."""

    def __init__(self) -> None:
        self.method = "getrusage"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            rss = _status_kib("VmRSS")
            if rss is not None and _status_kib("VmHWM") is not None:
                self.method = "vmhwm"
                self.base = rss * 1024
                return
        except OSError:
            pass
        self.base = _maxrss_bytes()

    def peak(self) -> tuple[int, int]:
        """(peak bytes, peak minus the baseline)."""
        vmhwm = self.method == "vmhwm"
        hwm = (_status_kib("VmHWM") or 0) * 1024 if vmhwm else _maxrss_bytes()
        return hwm, max(0, hwm - self.base)


# -- runtimes ---------------------------------------------------------------------------------


def _numpy():
    try:
        import numpy
    except ImportError:
        msg = f"numpy is not installed for {sys.executable}: pip install numpy"
        raise RunnerError(msg) from None
    return numpy


def _litert_interpreter():
    try:
        from ai_edge_litert import interpreter as mod

        return mod, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as mod

        return mod, "tflite_runtime"
    except ImportError:
        raise RunnerError(
            f"no TFLite runtime for {sys.executable}: pip install ai-edge-litert "
            "(or tflite-runtime)"
        ) from None


def _version(package: str) -> str:
    try:
        from importlib.metadata import version

        return version(package.replace("_", "-"))
    except Exception:  # noqa: BLE001 - any failure just means "unknown"
        return "unknown"


class LiteRTModel:
    """A LiteRT interpreter on the chosen kernels, inputs set by position."""

    def __init__(self, path: str, kernels: str, threads: int) -> None:
        mod, package = _litert_interpreter()
        resolver = {
            "xnnpack": "AUTO",
            "ref": "BUILTIN_REF",
            "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
        }[kernels]
        self.runtime = f"{package} {_version(package)}"
        try:
            self.it = mod.Interpreter(
                model_path=path,
                num_threads=threads,
                experimental_op_resolver_type=getattr(mod.OpResolverType, resolver),
            )
            self.it.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise RunnerError(f"LiteRT ({kernels} kernels) cannot load {path}: {exc}") from None
        np = _numpy()
        self.inputs = [
            (d["name"], [int(s) for s in d["shape"]], np.dtype(d["dtype"]).name, d["index"])
            for d in self.it.get_input_details()
        ]
        self.outputs = [(d["name"], d["index"]) for d in self.it.get_output_details()]

    def set_inputs(self, arrays: list) -> None:
        np = _numpy()
        for (_, _, dtype, index), x in zip(self.inputs, arrays):
            self.it.set_tensor(index, np.ascontiguousarray(x, dtype=dtype))

    def invoke(self) -> None:
        self.it.invoke()

    def results(self) -> list:
        return [self.it.get_tensor(index).copy() for _, index in self.outputs]


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(uint16)": "uint16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}  # fmt: skip


class OrtModel:
    """An ONNX Runtime CPU session with the options edgeres uses on the host."""

    def __init__(self, path: str, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RunnerError(
                f"onnxruntime is not installed for {sys.executable}: pip install onnxruntime"
            ) from None
        self.runtime = f"onnxruntime {ort.__version__}"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped failures
            raise RunnerError(f"ONNX Runtime cannot load {path}: {exc}") from None
        self.inputs = []
        for i in self.sess.get_inputs():
            if i.type not in _ORT_TYPES:
                raise RunnerError(f"input {i.name} has unsupported type {i.type}")
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            self.inputs.append((i.name, shape, _ORT_TYPES[i.type], i.name))
        self.outputs = [(o.name, o.name) for o in self.sess.get_outputs()]
        self.feed: dict = {}
        self.last: list = []

    def set_inputs(self, arrays: list) -> None:
        np = _numpy()
        self.feed = {
            name: np.ascontiguousarray(x, dtype=dtype)
            for (name, _, dtype, _), x in zip(self.inputs, arrays)
        }

    def invoke(self) -> None:
        self.last = self.sess.run(None, self.feed)

    def results(self) -> list:
        return [_numpy().asarray(y) for y in self.last]


def is_onnx(args: argparse.Namespace) -> bool:
    return args.runtime == "onnxruntime" or (args.runtime == "auto" and
                                             args.model.endswith(".onnx"))


def open_model(path: str, runtime: str, kernels: str, threads: int):
    if not os.path.isfile(path):
        raise RunnerError(f"model file {path} does not exist")
    if runtime == "auto":
        runtime = "onnxruntime" if path.endswith(".onnx") else "litert"
    if runtime == "onnxruntime":
        return OrtModel(path, threads)
    return LiteRTModel(path, kernels, threads)


def random_inputs(specs: list, seed: int) -> list:
    np = _numpy()
    rng = np.random.default_rng(seed)
    out = []
    for _, shape, dtype, _ in specs:
        dt = np.dtype(dtype)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            out.append(rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt))
        elif dt.kind == "b":
            out.append(rng.integers(0, 1, size=shape, endpoint=True).astype(bool))
        else:
            out.append(rng.standard_normal(shape).astype(dt))
    return out


# -- modes ------------------------------------------------------------------------------------


def _percentile(sorted_ms: list, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    pos = (len(sorted_ms) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def measure(args: argparse.Namespace, threads: int) -> dict:
    """One thread count, in this process."""
    _numpy()
    if is_onnx(args):
        with contextlib.suppress(ImportError):  # open_model says what to install
            import onnxruntime  # noqa: F401 - import before the memory baseline
    else:
        _litert_interpreter()  # import before the memory baseline
    meter = RssMeter()
    t0 = time.perf_counter_ns()
    model = open_model(args.model, args.runtime, args.kernels, threads)
    load_ns = time.perf_counter_ns() - t0
    model.set_inputs(random_inputs(model.inputs, args.seed))
    t0 = time.perf_counter_ns()
    model.invoke()
    first_ns = time.perf_counter_ns() - t0
    for _ in range(args.warmup):
        model.invoke()
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter_ns()
        model.invoke()
        times.append(time.perf_counter_ns() - t0)
    peak, delta = meter.peak()
    ms = sorted(t / 1e6 for t in times)
    return {
        "threads": threads, "warmup": args.warmup, "runs": args.runs,
        "load_ms": load_ns / 1e6, "first_ms": first_ns / 1e6,
        "median_ms": _percentile(ms, 0.5), "p90_ms": _percentile(ms, 0.9),
        "min_ms": ms[0], "max_ms": ms[-1], "mean_ms": sum(ms) / len(ms),
        "peak_rss_bytes": peak, "peak_rss_delta_bytes": delta, "rss_method": meter.method,
        "runtime_version": model.runtime,
        "inputs": [{"name": n, "shape": s, "dtype": d} for n, s, d, _ in model.inputs],
    }  # fmt: skip


def _child(args: argparse.Namespace, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), args.model, "--runtime", args.runtime,
           "--kernels", args.kernels, "--threads", str(threads), "--warmup", str(args.warmup),
           "--runs", str(args.runs), "--seed", str(args.seed), "--in-process"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    data = parse_line(proc.stdout)
    if data is None:
        tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
        raise RunnerError(
            f"the {threads}-thread run exited with {proc.returncode}: {tail or 'no output'}"
        )
    if "error" in data:
        raise RunnerError(data["error"])
    return dict(data["results"][0], runtime_version=data["runtime_version"],
                inputs=data["inputs"])


def parse_line(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(f'{{"schema": "{SCHEMA}"'):
            return json.loads(line)
    return None


def bench(args: argparse.Namespace) -> dict:
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if not threads or min(threads) < 1:
        raise RunnerError("--threads needs positive integers, e.g. 1,2,4")
    if args.runs < 1 or args.warmup < 0:
        raise RunnerError("--runs must be >= 1 and --warmup >= 0")
    if args.in_process or len(threads) == 1:
        results = [measure(args, t) for t in threads]
    else:
        results = [_child(args, t) for t in threads]
    first = results[0]
    ort = is_onnx(args)
    return {
        "mode": "bench",
        "model": os.path.basename(args.model),
        "model_bytes": os.path.getsize(args.model),
        "runtime": "onnxruntime" if ort else "litert",
        "kernels": None if ort else args.kernels,
        "runtime_version": first.pop("runtime_version"),
        "inputs": first.pop("inputs"),
        "platform": platform_info(),
        "results": [{k: v for k, v in r.items() if k not in ("runtime_version", "inputs")}
                    for r in results],
    }


def check(args: argparse.Namespace) -> dict:
    np = _numpy()
    model = open_model(args.model, args.runtime, args.kernels, int(args.threads.split(",")[0]))
    try:
        with np.load(args.check) as data:
            stored = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise RunnerError(f"cannot read inputs {args.check}: {exc}") from None
    arrays = []
    for i, (name, _, _, _) in enumerate(model.inputs):
        for key in (name, f"input_{i}", f"arr_{i}"):
            if key in stored:
                arrays.append(stored[key])
                break
        else:
            keys = ", ".join(sorted(stored))
            raise RunnerError(f"{args.check} has no array for input {i} ({name}); keys: {keys}")
    for x, (name, _, dtype, _) in zip(arrays, model.inputs):
        if x.dtype.name != dtype:
            raise RunnerError(f"{args.check}: input {name} must be {dtype}, got {x.dtype.name} "
                              "(quantize it first: round(x / scale) + zero_point)")
    n = _samples(arrays, [s for _, s, _, _ in model.inputs], args.check)
    per_sample: list = []
    for j in range(n):
        model.set_inputs([x[j:j + 1] for x in arrays] if n > 1 else arrays)
        model.invoke()
        per_sample.append(model.results())
    outs = [np.concatenate(parts) for parts in zip(*per_sample)]
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, **{f"output_{i}": y for i, y in enumerate(outs)})
    os.replace(tmp, args.out)
    return {
        "mode": "check", "model": os.path.basename(args.model), "samples": n,
        "runtime_version": model.runtime, "platform": platform_info(),
        "outputs": [{"name": name, "key": f"output_{i}", "shape": list(y.shape),
                     "dtype": y.dtype.name} for i, ((name, _), y) in
                    enumerate(zip(model.outputs, outs))],
    }  # fmt: skip


def _samples(arrays: list, shapes: list, source: str) -> int:
    """1 if the arrays match the model's shapes; N if a batch-1 model gets N samples."""
    for x, shape in zip(arrays, shapes):
        if list(x.shape[1:]) != list(shape[1:]) or x.ndim != len(shape):
            raise RunnerError(
                f"{source}: array of shape {list(x.shape)} does not fit the model input {shape}"
            )
    if all(x.shape[0] == s[0] for x, s in zip(arrays, shapes)):
        return 1
    sizes = set(x.shape[0] for x in arrays)
    if any(s[0] != 1 for s in shapes) or len(sizes) != 1:
        raise RunnerError(f"{source}: batch sizes {sorted(sizes)} do not fit the model")
    return sizes.pop()


def platform_info() -> dict:
    return {"system": platform.system(), "machine": platform.machine(),
            "python": platform.python_version(), "cpus": os.cpu_count() or 0}


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description="Benchmark or run a .tflite/.onnx model.")
    p.add_argument("model")
    p.add_argument("--runtime", choices=("auto", "litert", "onnxruntime"), default="auto")
    p.add_argument("--kernels", choices=("xnnpack", "ref", "builtin"), default="xnnpack")
    p.add_argument("--threads", default="1", help="comma-separated thread counts")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", metavar="INPUTS.npz", help="run on these inputs instead")
    p.add_argument("--out", metavar="OUTPUTS.npz", help="where --check writes the outputs")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.check and not args.out:
        p.error("--check needs --out OUTPUTS.npz")
    try:
        emit(check(args) if args.check else bench(args))
    except RunnerError as exc:
        emit({"error": str(exc)})
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - a runtime failure mid-run: report, do not trace
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
