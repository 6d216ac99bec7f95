"""report.json and a self-contained report.html (tables + inline SVG plots) for a bundle.

Plots are SVG with a fixed hash salt and no date, so reports are byte-identical across runs.
"""

from __future__ import annotations

import html
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgeres.bundle import dumps  # noqa: E402


def _svg(fig) -> str:  # noqa: ANN001 - matplotlib Figure
    plt.rcParams["svg.hashsalt"] = "edgeres"
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def sqnr_plot(layers: list[tuple[str, float, float]]) -> str:
    """Per layer, in graph order: the SQNR of the layer quantized alone (bars: where error
    enters) and of the whole simulation up to it (line: how it accumulates), against float.
    ``layers``: (name, cumulative dB, local dB); inf (nothing lost): no bar, or the line at
    the top."""
    names = [n for n, _, _ in layers]
    cumulative = [c if math.isfinite(c) else 80.0 for _, c, _ in layers]
    local = [loc if math.isfinite(loc) else 0.0 for _, _, loc in layers]
    fig, ax = plt.subplots(figsize=(10, 3.4))
    ax.bar(range(len(local)), local, color="#9cc3f0",
           label="this layer alone (no bar: it adds no error)")
    ax.plot(range(len(cumulative)), cumulative, color="#1f4e8c", marker=".", linewidth=1.2,
            label="cumulative (what the device computes there)")
    ax.set_ylabel("SQNR vs float (dB)")
    ax.set_xlabel("layer (graph order)")
    ax.set_title("Where quantization error enters (bars) and how it accumulates (line)")
    ax.set_ylim(0, min(80.0, max(local + cumulative, default=40.0) + 5))
    step = max(1, len(names) // 20)
    ax.set_xticks(range(0, len(names), step))
    ax.set_xticklabels([names[i] for i in range(0, len(names), step)], rotation=70, fontsize=6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
    return _svg(fig)


def accuracy_plot(metrics: dict) -> str:
    labels, values = [], []
    for key, label in (
        ("float_top1", "float"),
        ("quant_top1", "quantized"),
        ("top1_agreement", "agreement"),
    ):
        if metrics.get(key) is not None:
            labels.append(label)
            values.append(metrics[key])
    fig, ax = plt.subplots(figsize=(4, 3))
    bars = ax.bar(labels, values, color=["#888888", "#3b7dd8", "#2a9d5c"][: len(values)])
    for b, v in zip(bars, values, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom")
    if metrics.get("expected_agreement") is not None and "agreement" in labels:
        b = bars[labels.index("agreement")]
        ax.errorbar(b.get_x() + b.get_width() / 2, metrics["expected_agreement"],
                    yerr=metrics["agreement_sd"], fmt="o", color="black", capsize=4,
                    label="expected at this noise +- sd")
        ax.legend(loc="upper left", fontsize=7)
    ax.set_ylim(max(0.0, min(values, default=0) - 10), 100.5)
    ax.set_ylabel("%")
    ax.set_title(f"{metrics.get('samples', '?')} samples")
    fig.tight_layout()
    return _svg(fig)


def _table(rows: list[tuple], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}th{background:#f3f3f3}h1{font-size:22px}h2{font-size:17px}"""


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} %"


def write_report(stage: Path, report: dict) -> None:
    """Write ``report.json`` and ``report.html`` into the bundle staging folder."""
    (stage / "report.json").write_text(dumps(report))
    m = report.get("metrics", {})
    parts = [
        f"<h1>edgeres bundle: {html.escape(report['model'])} on "
        f"{html.escape(report['target'])}</h1>"
    ]
    parts.append(_table([(k, v) for k, v in report.get("summary", {}).items()], ("what", "value")))
    if m:
        parts.append("<h2>Accuracy against the float model</h2>" + accuracy_plot(m))
    layers = report.get("layer_sqnr", [])
    if layers:
        parts.append("<h2>Per-layer SQNR (simulation vs float)</h2>")

        def db(v: float | None) -> float:
            return math.inf if v is None else v

        parts.append(sqnr_plot([(d["layer"], db(d["sqnr_db"]), db(d.get("local_sqnr_db")))
                                for d in layers]))
        worst = sorted((d for d in layers
                        if d.get("local_sqnr_db") is not None and not d.get("partial")),
                       key=lambda d: d["local_sqnr_db"])[:8]  # REx terms: partial sums
        parts.append(_table(
            [(d["layer"], d["local_sqnr_db"], d["sqnr_db"], _pct(d.get("clipped_pct")))
             for d in worst],
            ("layers adding the most error", "alone dB", "cumulative dB", "float values clipped"),
        ))
    ops = report.get("ops", [])
    if ops:
        parts.append("<h2>Where each op runs</h2>")
        parts.append(
            _table(
                [(o["node"], o["op"], o["where"], o.get("why", "")) for o in ops],
                ("node", "op", "where", "why"),
            )
        )
    plan = report.get("plan", {}).get("report", [])
    if plan:
        parts.append("<h2>Quantization decisions</h2>")
        parts.append(
            _table(
                [(d["subject"], d["decision"], d["reason"]) for d in plan],
                ("layer / tensor", "decision", "why"),
            )
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>edgeres report</title>"
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    (stage / "report.html").write_text(page)
