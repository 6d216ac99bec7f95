"""The `edgeres targets` table: every profile's facts on one line, at any terminal width."""

from __future__ import annotations

from rich import box
from rich.table import Table

from edgeres.targets import Memory, Target, WeightRules


def _gran(g: tuple[str, ...]) -> str:
    return "/".join("pc" if x == "per-channel" else "pt" for x in g)


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n // 1024} KiB"


def _weights_cell(w: WeightRules) -> str:
    """``int8 pc/pt``, with the depthwise granularity only where it differs; ``int8>u8``
    where the codes are stored as uint8 + 128."""
    dw = w.depthwise_granularity
    extra = "" if dw == w.granularity else f" (dw {_gran(dw)})"
    stored = ">u8" if w.uint8_storage else ""
    return f"int{'/'.join(map(str, w.bits))}{stored} {_gran(w.granularity)}{extra}"


def _memory_cell(m: Memory, wide: bool) -> str:
    arena, flash = m.arena_bytes or m.sram_bytes, m.flash_bytes
    if arena is None and flash is None:
        return "-"
    if wide:
        return f"{_kib(arena)} / {_kib(flash)}"
    kib = ["-" if v is None else str(v // 1024) for v in (arena, flash)]
    return f"{kib[0]}/{kib[1]} KiB"


def render_targets_table(targets: list[Target], width: int = 250) -> Table:
    """A rich table of targets: what each runs, in which format and runtime, within what memory.
    Fits ``width`` columns: the description goes first, then family and format (the runtime
    implies both), so an 80-column terminal still gets every target's facts on one line."""
    wide, describe = width >= 120, width >= 150
    if wide:
        table = Table(title="edgeres targets")
    else:
        table = Table(title="edgeres targets", box=box.SIMPLE_HEAD, padding=0,
                      pad_edge=False, show_edge=False)
    columns = ["name", *(("family", "format") if wide else ()), "runtime", "weights",
               "activations" if wide else "acts", "I/O", "arena / flash" if wide else "arena/flash"]
    for col in columns:
        table.add_column(col, no_wrap=True)
    if describe:
        table.add_column("description", overflow="fold")
    for t in targets:
        a = t.activations
        acts = f"{'int' if a.signed else 'uint'}{'/'.join(map(str, a.bits))}"
        row = [t.name, *((t.family, t.format) if wide else ()), t.runtime, _weights_cell(t.weights),
               acts, t.io_dtype, _memory_cell(t.memory, wide)]
        table.add_row(*row, *((t.description,) if describe else ()))
    return table
