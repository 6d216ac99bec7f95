"""Quantization-aware training: PTQ init, distillation from the float model, checkpoints, DDP.

    result = run_qat("mobilenet_v2_fmnist", load_target("npu-int8-per-tensor"),
                     QATConfig(epochs=3), train, val, Path("out/qat"))
    export_tflite(result.qmodel, Path("model.tflite"))

Recipe, and why:

* Start from PTQ (:func:`edgeres.quant.ptq.quantize_graph` on 512 training images), or from
  REx (:func:`edgeres.graph.rex_expand.quantize_rex`) to fine-tune an expanded model: every
  scale, zero point and bias starts where that left it, so QAT only recovers what it lost.
* BatchNorm is folded from the start (capture folds it): QAT trains the weights the kernels
  run, with frozen statistics from the first step (no freezing schedule to tune).
* Loss: ``alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * CE(student, label)`` with the
  float graph as teacher (Hinton et al.), which transfers the float model's dark knowledge
  instead of re-learning from labels alone.
* SGD with Nesterov momentum and a cosine learning rate over ``epochs`` (``steps`` only caps
  how far a run goes, so a smoke run and its resumed continuation follow one schedule).
  Learned scales and zero points get LSQ's gradient scale ``1/sqrt(N * qmax)`` (Esser et al.):
  without it a step size collects the gradient of every element it quantizes and swamps the
  weights' learning rate. SGD rather than Adam also keeps data-parallel runs equal to
  single-process runs (Adam's first step is ``sign(grad)``, which amplifies rounding noise).
* Data-parallel under ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on GPU): the global
  batch ``cfg.batch`` is split evenly over the ranks with a DistributedSampler, so N processes
  take the same steps as one process would.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from edgeres.config import PTQConfig, QATConfig, RExConfig
from edgeres.data.specs import DataSet, subset_indices
from edgeres.errors import UserError
from edgeres.graph.capture import capture
from edgeres.graph.ir import OPS, Graph
from edgeres.paths import replaced_atomically
from edgeres.quant.plan import make_plan
from edgeres.quant.ptq import quantize_graph
from edgeres.quant.qat import QATNet, qat_to_qmodel, scale_gradients
from edgeres.quant.qmodel import QModel
from edgeres.targets import Target

CHECKPOINT_NAME = "qat_checkpoint.pt"
CHECKPOINT_FORMAT = "edgeres.qat/1"
CALIBRATION_SAMPLES = 512
EVAL_BATCH = 500


@dataclass
class QATResult:
    """What a QAT run produced. Accuracies are top-1 % on the validation set: ``float_acc`` of
    the float model, ``start_acc`` of the start point (PTQ, or REx when expanding: see
    ``start_scheme``), ``qat_acc`` of the trained brevitas network (which the QModel simulates
    within 1 LSB)."""

    qmodel: QModel
    net: QATNet
    float_acc: float
    start_acc: float
    qat_acc: float
    epochs: float  # epochs trained in all (fractional when --steps stopped a run early)
    steps: int
    wall_s: float
    checkpoint: Path | None
    history: list[dict] = field(default_factory=list)
    start_scheme: str = "ptq"

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("qmodel", "net")}
        d["checkpoint"] = str(self.checkpoint) if self.checkpoint else None
        return d


# -- distributed ----------------------------------------------------------------------------


@dataclass
class _Dist:
    """This process's place in a data-parallel run (world 1 when torchrun is not used)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @classmethod
    def setup(cls) -> _Dist:
        cuda = torch.cuda.is_available()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=device)
        dist.init_process_group("nccl" if cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), device, owns_group=True)

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


# -- inputs ---------------------------------------------------------------------------------


def _load_graph(model: str | nn.Module | Graph, train: DataSet) -> tuple[Graph, str]:
    """The captured float graph and a label for messages (a zoo name captures at the
    zoo's own input size; a module at the training data's)."""
    if isinstance(model, Graph):
        return model, "graph"
    if isinstance(model, str):
        from edgeres.zoo import create_model, get_entry

        e = get_entry(model)
        example = torch.zeros(1, e.in_chans, e.img_size, e.img_size)
        return capture(create_model(model, pretrained=True), example), model
    if not isinstance(model, nn.Module):
        raise UserError(f"QAT takes a zoo model name, an nn.Module or a Graph, not {type(model)}")
    label = type(model).__name__
    try:
        return capture(model, train.x[:1]), label
    except RuntimeError as exc:
        raise UserError(f"training data '{train.name}' (samples of shape "
                        f"{list(train.x.shape[1:])}) does not fit model '{label}': "
                        f"{str(exc).splitlines()[0]}") from exc


def num_classes(graph: Graph) -> int:
    return int(graph.shapes[graph.outputs[0]][-1])


def _check_data(ds: DataSet, graph: Graph, label: str, role: str, need_labels: bool) -> None:
    expected = graph.inputs[0].shape
    if len(ds) == 0:
        raise UserError(f"{role} data '{ds.name}' is empty")
    if tuple(ds.x.shape[1:]) != tuple(expected[1:]):
        raise UserError(
            f"{role} data '{ds.name}' has samples of shape {list(ds.x.shape[1:])}; model "
            f"'{label}' expects {list(expected[1:])} (check channels and image size)"
        )
    if ds.y is None:
        if need_labels:
            raise UserError(f"{role} data '{ds.name}' has no labels; QAT needs labelled data")
        return
    n = num_classes(graph)
    low, high = int(ds.y.min()), int(ds.y.max())
    if low < 0 or high >= n:
        raise UserError(
            f"{role} data '{ds.name}' has labels {low}..{high} ({high + 1} classes) but model "
            f"'{label}' has {n} outputs: train on data with the model's classes, or build the "
            f"model with num_classes={high + 1}"
        )


def _ptq_config(cfg: QATConfig) -> PTQConfig:
    return PTQConfig(weight_bits=cfg.weight_bits, act_bits=cfg.act_bits,
                     per_channel=cfg.per_channel, smooth_alpha=0.0,  # QAT was measured unsmoothed
                     input_range=cfg.input_range)


def check_plan(graph: Graph, target: Target, cfg: QATConfig) -> None:
    """QAT trains exactly the format it exports: bits the target lacks or a granularity it
    cannot give are a UserError (from make_plan) before any training time is spent."""
    make_plan(graph, target, cfg.weight_bits, cfg.act_bits, cfg.per_channel)


# -- checkpoints ----------------------------------------------------------------------------


def graph_fingerprint(graph: Graph) -> str:
    """sha256 of the graph's structure and float parameters: 'the same model'."""
    h = hashlib.sha256()
    for node in graph.nodes:
        h.update(json.dumps([node.name, node.op, node.inputs, node.output,
                             sorted((k, str(v)) for k, v in node.attrs.items())]).encode())
        for k in sorted(node.params):
            h.update(k.encode())
            h.update(node.params[k].detach().to(torch.float32).contiguous().numpy().tobytes())
    h.update(json.dumps([[i.name, list(i.shape)] for i in graph.inputs]).encode())
    return h.hexdigest()


def _run_meta(label: str, graph: Graph, target: Target, cfg: QATConfig, n_train: int,
              rex: RExConfig | None) -> dict:
    config = cfg.to_json()
    config.pop("steps")  # a cap on this run, not part of the schedule
    return {
        "format": CHECKPOINT_FORMAT,
        "model": label,
        "fingerprint": graph_fingerprint(graph),
        "target": target.name,
        "config": config,
        "num_classes": num_classes(graph),
        "train_samples": n_train,
        "rex": None if rex is None else rex.to_json(),
    }


def _mismatches(saved: dict, meta: dict, prefix: str = "") -> list[str]:
    """What differs between a checkpoint's run and this one, one short item per leaf key."""
    out = []
    if not prefix and saved.get("fingerprint") != meta["fingerprint"]:
        out.append(f"model: the checkpoint's layers or float weights are not this model's "
                   f"({str(saved.get('fingerprint'))[:12]} vs {meta['fingerprint'][:12]})")
    keys = ("target", "num_classes", "train_samples", "rex", "config") if not prefix else sorted(
        set(saved) | set(meta))
    for key in keys:
        old, new = saved.get(key), meta.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += _mismatches(old, new, f"{prefix}{key} ")
        elif old != new:
            out.append(f"{prefix}{key}: checkpoint {old!r}, this run {new!r}")
    return out


def load_checkpoint(path: Path, meta: dict) -> dict:
    """A checkpoint written by a run with the same model, target, config and data, else a
    UserError that lists every difference."""
    path = Path(path)
    if path.is_dir():  # the checkpoint folder a run wrote: resume from its checkpoint
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist")
    from edgeres.resolve import load_torch_file

    ckpt = load_torch_file(path, "checkpoint", "pass a checkpoint edgeres qat wrote")
    meta_saved = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if not isinstance(meta_saved, dict) or meta_saved.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"'{path}' is not an edgeres QAT checkpoint ({CHECKPOINT_FORMAT})")
    diffs = _mismatches(ckpt["meta"], meta)
    if diffs:
        raise UserError(f"cannot resume from '{path}': it belongs to another run; "
                        + "; ".join(diffs))
    return ckpt


def _check_out_dir(out_dir: Path, meta: dict, resume: Path | None) -> None:
    """Never overwrite the checkpoint of a different run (resuming or not)."""
    existing = Path(out_dir) / CHECKPOINT_NAME
    if not existing.is_file() or (resume and existing.resolve() == Path(resume).resolve()):
        return
    try:
        saved = torch.load(existing, map_location="cpu", weights_only=True).get("meta", {})
    except Exception:  # noqa: BLE001 - unreadable: treat as foreign
        saved = {}
    diffs = _mismatches(saved, meta)
    if diffs:
        raise UserError(
            f"'{existing}' holds the checkpoint of another QAT run ({'; '.join(diffs[:2])}); "
            "choose another --out or delete it"
        )


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save via a temp file in the same directory and os.replace (never half-written)."""
    with replaced_atomically(path) as tmp:
        torch.save(state, tmp)


# -- training pieces ------------------------------------------------------------------------


class FloatTeacher(nn.Module):
    """The float graph as a module (parameters as buffers, so it follows ``.to(device)``)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self.keys: dict[str, dict[str, str]] = {}
        for i, node in enumerate(graph.nodes):
            self.keys[node.name] = {}
            for k, v in node.params.items():
                buf = f"p{i}_{k}"
                self.register_buffer(buf, v.detach().to(torch.float32).clone())
                self.keys[node.name][k] = buf

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        env = {self.graph.inputs[0].name: x}
        for node in self.graph.nodes:
            params = {k: getattr(self, b) for k, b in self.keys[node.name].items()}
            env[node.output] = OPS[node.op](node, [env[i] for i in node.inputs], params)
        return env[self.graph.outputs[0]]


def distill_loss(student: Tensor, teacher: Tensor, y: Tensor | None, cfg: QATConfig) -> Tensor:
    """Soft-target KL at temperature T (scaled by T^2) blended with cross-entropy by alpha."""
    t = cfg.distill_temperature
    kd = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                  reduction="batchmean", log_target=True) * (t * t)
    if y is None or cfg.distill_alpha >= 1.0:
        return kd
    return cfg.distill_alpha * kd + (1.0 - cfg.distill_alpha) * F.cross_entropy(student, y)


def cosine_lr(total: int):  # noqa: ANN201 - LambdaLR's callable
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


@torch.no_grad()
def evaluate(fn: nn.Module, ds: DataSet, d: _Dist) -> float:
    """Top-1 % of ``fn`` on ``ds``, each rank taking every world-th batch."""
    was = fn.training
    fn.eval()
    correct = total = 0
    starts = list(range(0, len(ds), EVAL_BATCH))[d.rank :: d.world]
    for i in starts:
        xb = ds.x[i : i + EVAL_BATCH].to(d.device)
        yb = ds.y[i : i + EVAL_BATCH].to(d.device)
        correct += int((fn(xb).argmax(-1) == yb).sum())
        total += len(yb)
    fn.train(was)
    correct, total = d.sum([float(correct), float(total)])
    return 100.0 * correct / max(total, 1.0)


def _batches(n: int, cfg: QATConfig, d: _Dist, epoch: int) -> list[Tensor]:
    """This rank's index batches of one epoch: the DistributedSampler's shard, cut in
    ``batch / world`` pieces, so step k of all ranks together is the same global batch that a
    single process takes at step k."""
    sampler = DistributedSampler(range(n), num_replicas=d.world, rank=d.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    sampler.set_epoch(epoch)
    idx = torch.tensor(list(sampler), dtype=torch.int64)
    per_rank = cfg.batch // d.world
    return [idx[k * per_rank : (k + 1) * per_rank] for k in range(n // cfg.batch)]


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  train {task.fields[acc]:.1f}%"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
    )


@dataclass
class _State:
    step: int = 0
    float_acc: float = float("nan")
    start_acc: float = float("nan")
    history: list[dict] = field(default_factory=list)


# -- the entry point ------------------------------------------------------------------------


def run_qat(
    model_name_or_module: str | nn.Module | Graph,
    target: Target,
    cfg: QATConfig,
    train_data: DataSet,
    val_data: DataSet,
    out_dir: Path,
    resume: Path | None = None,
    progress: bool = True,
    rex: RExConfig | None = None,
) -> QATResult:
    """Train ``model`` for ``target`` with QAT and return the QModel to export.

    ``rex``: fine-tune a REx-expanded model instead (the expansion's K integer terms of each
    layer are trained as layers of their own, each with its learned scale).

    Runs data-parallel when started by ``torchrun`` (every rank returns the same result; rank 0
    writes ``out_dir/qat_checkpoint.pt`` after every epoch and at the end). ``resume``
    continues from such a checkpoint; without it a run starts afresh (over a checkpoint of the
    same run, never over another run's). Bad input (data of another shape or class count, a
    target that cannot run the asked format, a checkpoint of another run) raises a UserError
    before anything is written.
    """
    started = time.perf_counter()
    d = _Dist.setup()
    try:
        return _run(model_name_or_module, target, cfg, train_data, val_data, Path(out_dir),
                    resume, progress and d.rank == 0, d, started, rex)
    finally:
        d.close()


def init_net(graph: Graph, target: Target, cfg: QATConfig, train: DataSet,
             rex: RExConfig | None = None) -> tuple[QATNet, QModel]:
    """The start QModel, calibrated on 512 seeded training samples (PTQ, or REx-expanded when
    ``rex`` is given), and the QAT network that computes it. The QAT config decides the bits
    and granularity; ``rex`` adds the order, sparsity and budgets."""
    n = min(len(train), CALIBRATION_SAMPLES)
    calib = train.x[torch.from_numpy(subset_indices(len(train), n, cfg.seed, train.name))]
    if rex is None:
        start = quantize_graph(graph, _ptq_config(cfg), target, calib)
    else:
        from edgeres.graph.rex_expand import quantize_rex

        ptq = replace(rex.ptq, act_bits=cfg.act_bits, per_channel=cfg.per_channel,
                      input_range=cfg.input_range)
        start = quantize_rex(graph, replace(rex, weight_bits=cfg.weight_bits, ptq=ptq), target,
                             calib)
    frozen = [graph.inputs[0].name] if cfg.input_range is not None else []
    return QATNet(start, frozen, cfg.input_gain), start


@dataclass
class _Run:
    """One training run's moving parts; ``fit`` takes the steps, ``finish`` builds the result."""

    d: _Dist
    cfg: QATConfig
    label: str
    meta: dict
    net: QATNet
    start: QModel  # the PTQ / REx model QAT starts from
    teacher: FloatTeacher
    train: DataSet
    val: DataSet
    path: Path
    per_epoch: int
    state: _State = field(default_factory=_State)

    def setup(self, ckpt: dict | None) -> None:
        """Load a checkpoint, move to the device, build the optimizer, wrap for DDP.

        In that order: brevitas's ``load_state_dict`` replaces parameter objects, so an
        optimizer built before it would step stale tensors.
        """
        self.total = self.cfg.epochs * self.per_epoch
        self.end = min(self.total, self.cfg.steps or self.total)
        if ckpt is not None:
            self.net.load_state_dict(ckpt["net"])
        self.net.to(self.d.device)
        self.teacher.to(self.d.device)
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=self.cfg.lr, momentum=0.9, nesterov=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cosine_lr(self.total))
        if ckpt is not None:
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            self.state = _State(ckpt["step"], ckpt["float_acc"], ckpt["start_acc"],
                                ckpt["history"])
        scale_gradients(self.net)
        self.model = DistributedDataParallel(self.net) if self.d.world > 1 else self.net

    def checkpoint(self) -> None:
        if self.d.rank == 0:
            save_checkpoint(self.path, {
                "meta": self.meta, "step": self.state.step, "net": self.net.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "float_acc": self.state.float_acc, "start_acc": self.state.start_acc,
                "history": self.state.history,
            })
        self.d.barrier()

    def step(self, idx: Tensor) -> tuple[float, int, int]:
        """One optimizer step on this rank's ``idx``; (loss, correct, labelled samples)."""
        dev = self.d.device
        xb = self.train.x[idx].to(dev)
        yb = None if self.train.y is None else self.train.y[idx].to(dev)
        student = self.model(xb)
        loss = distill_loss(student, self.teacher(xb), yb, self.cfg)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if yb is None:
            return float(loss.detach()), 0, 0
        return float(loss.detach()), int((student.argmax(-1) == yb).sum()), len(yb)

    def fit(self, show: bool) -> None:
        st = self.state
        self.net.train()
        loss_sum, correct, seen, done = 0.0, 0, 0, 0
        batches: list[Tensor] = []
        with _progress(show) as bar:
            task = bar.add_task(f"QAT {self.label}", total=self.end, completed=st.step,
                                loss=0.0, acc=0.0)
            for step in range(st.step, self.end):
                epoch, k = divmod(step, self.per_epoch)
                if k == 0 or not batches:
                    batches = _batches(len(self.train), self.cfg, self.d, epoch)
                loss, ok, n = self.step(batches[k])
                st.step, done = step + 1, done + 1
                loss_sum, correct, seen = loss_sum + loss, correct + ok, seen + n
                bar.update(task, advance=1, loss=loss_sum / done,
                           acc=100.0 * correct / max(seen, 1))
                if st.step % self.per_epoch and st.step != self.end:
                    continue
                record = {"epoch": round(st.step / self.per_epoch, 3), "step": st.step,
                          "lr": self.sched.get_last_lr()[0], "loss": loss_sum / done}
                if st.step % self.per_epoch == 0:
                    record["val_acc"] = evaluate(self.net, self.val, self.d)
                    if show:
                        bar.console.print(f"epoch {record['epoch']:g}: val top-1 "
                                          f"{record['val_acc']:.2f}%  loss {record['loss']:.4f}")
                st.history.append(record)
                self.checkpoint()

    def finish(self, target: Target, started: float) -> QATResult:
        self.net.eval()
        last = self.state.history[-1] if self.state.history else {}
        if last.get("step") == self.state.step and "val_acc" in last:
            qat_acc = last["val_acc"]  # measured on these very weights at the epoch's end
        else:
            qat_acc = evaluate(self.net, self.val, self.d)
        self.net.to("cpu")
        start = self.start
        meta = {"target": target.name, "config": self.cfg.to_json(), "model": self.label,
                "steps": self.state.step, "start_scheme": start.scheme,
                "plan": start.meta.get("plan"), "rex": start.meta.get("rex"),
                "lowering": start.meta.get("lowering"),
                "uint8_weight_storage": start.meta.get("uint8_weight_storage", False),
                "calibration_samples": start.meta.get("calibration_samples")}
        scheme = "qat" if start.scheme == "ptq" else f"{start.scheme}+qat"
        qmodel = qat_to_qmodel(self.net, meta=meta, scheme=scheme)
        qmodel.plan = start.plan  # type: ignore[attr-defined]
        st = self.state
        return QATResult(
            qmodel=qmodel, net=self.net, float_acc=st.float_acc, start_acc=st.start_acc,
            qat_acc=qat_acc, epochs=st.step / self.per_epoch, steps=st.step,
            wall_s=round(time.perf_counter() - started, 2),
            checkpoint=self.path if self.path.is_file() else None, history=st.history,
            start_scheme=start.scheme,
        )


def _run(model, target, cfg, train, val, out_dir, resume, show, d, started, rex):  # noqa: ANN001, ANN202
    graph, label = _load_graph(model, train)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UserError(f"QAT trains classifiers with one input and one output; model "
                        f"'{label}' has {len(graph.inputs)} inputs, {len(graph.outputs)} outputs")
    _check_data(train, graph, label, "training", need_labels=cfg.distill_alpha < 1.0)
    _check_data(val, graph, label, "validation", need_labels=True)
    if cfg.batch % d.world:
        raise UserError(f"QAT batch {cfg.batch} does not split over {d.world} processes; "
                        "use a batch that is a multiple of --nproc_per_node")
    per_epoch = len(train) // cfg.batch
    if per_epoch == 0:
        raise UserError(f"training data '{train.name}' has {len(train)} samples, fewer than "
                        f"one batch of {cfg.batch}; add data or lower --batch")
    check_plan(graph, target, cfg)
    meta = _run_meta(label, graph, target, cfg, len(train), rex)
    ckpt = load_checkpoint(resume, meta) if resume is not None else None
    _check_out_dir(out_dir, meta, resume)
    # -- nothing was written before this line; every bad input has been refused ----------
    torch.manual_seed(cfg.seed)
    net, start = init_net(graph, target, cfg, train, rex)
    run = _Run(d, cfg, label, meta, net, start, FloatTeacher(graph), train, val,
               out_dir / CHECKPOINT_NAME, per_epoch)
    run.setup(ckpt)
    if ckpt is None:
        run.state.float_acc = evaluate(run.teacher, val, d)
        run.state.start_acc = evaluate(net, val, d)
    run.fit(show)
    return run.finish(target, started)


__all__ = ["QATResult", "distill_loss", "graph_fingerprint", "init_net", "load_checkpoint",
           "run_qat", "save_checkpoint"]
