"""Train a zoo model on Fashion-MNIST and write the weights the zoo ships.

    python tools/train_fmnist.py mobilenet_v2_fmnist --epochs 15
    python tools/train_fmnist.py emo_1m_fmnist --epochs 15

Recipe: SGD momentum 0.9 + Nesterov, cosine LR from 0.2 (batch 256), weight decay 4e-5 off
norms and biases, label smoothing 0.1, random crop (pad 2) + horizontal flip. Seeded. The
final test accuracy and the command are written next to the weights as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from edgeres.data.fmnist import load_fmnist
from edgeres.zoo import create_model, get_entry
from edgeres.zoo.models import SHIPPED


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 2-px shift (zero pad + crop) and horizontal flip, per sample."""
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=gen)
    dx = torch.randint(0, 5, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(28)[None]).clamp(max=31)
    cols = (dx[:, None] + torch.arange(28)[None]).clamp(max=31)
    idx_n = torch.arange(n)[:, None, None]
    out = padded[:, 0][idx_n, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), bs):
            xb = x[i : i + bs].contiguous(memory_format=torch.channels_last)
            correct += (model(xb).argmax(1) == y[i : i + bs]).sum().item()
    return 100.0 * correct / len(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--init", type=Path, default=None, help="start from these weights (fine-tune)")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of steps warming up")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    entry = get_entry(args.model)
    pre = entry.preprocess
    xtr, ytr = load_fmnist("train")
    xte, yte = load_fmnist("test")
    to_t = lambda a: torch.from_numpy(a).float().unsqueeze(1) / 255.0  # noqa: E731
    xtr_t, xte_t = to_t(xtr), pre.normalize(to_t(xte))
    ytr_t, yte_t = torch.from_numpy(ytr), torch.from_numpy(yte)

    model = create_model(args.model, pretrained=args.init).to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 4e-5}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        momentum=0.9,
        nesterov=True,
    )
    steps_per_epoch = len(xtr_t) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=args.warmup
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    history = []
    cols = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*cols) as progress:
        task = progress.add_task(args.model, total=args.epochs * steps_per_epoch, info="")
        for epoch in range(args.epochs):
            model.train()
            perm = torch.randperm(len(xtr_t), generator=gen)
            for s in range(steps_per_epoch):
                idx = perm[s * args.batch : (s + 1) * args.batch]
                xb = pre.normalize(augment(xtr_t[idx], gen)).contiguous(
                    memory_format=torch.channels_last
                )
                loss = loss_fn(model(xb), ytr_t[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                progress.update(task, advance=1, info=f"epoch {epoch + 1} loss {loss.item():.3f}")
            acc = evaluate(model, xte_t, yte_t)
            history.append(acc)
            progress.console.print(f"epoch {epoch + 1}: test top-1 {acc:.2f}%")
    out = args.out or SHIPPED / f"{args.model}.pth"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = out.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(out)
    record = {
        "model": args.model,
        "test_top1": history[-1],
        "history": history,
        "epochs": args.epochs,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "wall_s": round(time.time() - start, 1),
        "torch": torch.__version__,
        "command": "python tools/train_fmnist.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
