"""Accuracy gates: the floors a bundle is held to (``--min-agreement``, ``--max-drop``).

``convert`` records the floors it was given and the verdict in the manifest's ``gates``;
``check`` applies its own floors, and refuses a record that its metrics contradict (the
manifest is the one file its hashes do not cover, so a hand edit shows only this way).
"""

from __future__ import annotations

from collections.abc import Callable

from edgeres.errors import UserError


def floor_failures(metrics: dict, min_agreement: float | None,
                   max_drop: float | None) -> list[str]:
    """The stated floors (``--min-agreement``, ``--max-drop``) that ``metrics`` misses, one
    phrase each; convert and check gate on the same words."""
    out = []
    agreement = _exact(metrics, "top1_agreement")
    if min_agreement is not None and agreement < min_agreement:
        expected, sd = metrics.get("expected_agreement"), metrics.get("agreement_sd")
        note = (f" (expected at this noise level: {expected:.1f} +- {sd:.1f}%)"
                if None not in (expected, sd) else "")
        shown, floor = _apart(agreement, min_agreement)
        out.append(f"top-1 agreement {shown}% is below --min-agreement {floor}%{note}")
    if max_drop is not None and None not in (metrics.get("float_top1"),
                                             metrics.get("quant_top1")):
        drop = _exact(metrics, "float_top1") - _exact(metrics, "quant_top1")
        if drop > max_drop:
            shown, floor = _apart(drop, max_drop)
            out.append(f"accuracy drop {shown} points exceeds --max-drop {floor}")
    return out


def _exact(metrics: dict, key: str) -> float:
    """A percentage of ``samples`` as the exact fraction it records: metrics keep 4 decimals,
    and a floor between the rounded and the true value must still be missed."""
    value, n = metrics[key], metrics.get("samples")
    if isinstance(n, int) and 0 < n <= 100_000:
        count = round(value * n / 100)
        if abs(count * 100 / n - value) < 1e-3:
            return count * 100 / n
    return value


def _apart(value: float, floor: float) -> tuple[str, str]:
    """``value`` to 2 decimals and ``floor`` as given, with more decimals where that much
    would print them equal (90.6667 against a floor of 90.67 is not '90.67 below 90.67')."""
    for digits in range(2, 10):
        if f"{value:.{digits}f}" != f"{floor:.{digits}f}":
            shown = f"{value:.{digits}f}"
            return shown, (f"{floor}" if digits == 2 else f"{floor:.{digits}f}")
    return repr(value), repr(floor)


def check_gates_record(m: dict, bad: Callable[[str, str], UserError]) -> None:
    """A UserError (from ``bad(key, problem)``) when ``m['gates']`` disagrees with itself or
    with ``m['metrics']``: a rejected bundle relabelled as passed, or the other way round."""
    gates = m.get("gates")
    if gates is None:
        return
    if gates["passed"] != (not gates["failures"]):
        raise bad("gates.passed", f"is {str(gates['passed']).lower()}, but 'gates.failures' "
                  f"lists {len(gates['failures'])}")
    missed = floor_failures(m["metrics"], gates["min_agreement"], gates["max_drop"])
    if gates["passed"] != (not missed):
        why = missed[0] if missed else "its metrics meet every floor"
        raise bad("gates.passed", f"is {str(gates['passed']).lower()}, but {why}")
    if gates["failures"] != missed:
        raise bad("gates.failures", f"does not match its floors and metrics, which give: "
                  f"{'; '.join(missed)}")


def recorded_rejection(m: dict) -> str | None:
    """Why convert rejected this bundle, or None: a bundle that missed its gates was written to
    OUT.rejected, and one found anywhere else was moved there by hand. The reasons are
    recomputed from the record's floors and metrics, never printed from its text."""
    gates = m.get("gates")
    if gates is None or gates["passed"]:
        return None
    missed = floor_failures(m["metrics"], gates["min_agreement"], gates["max_drop"])
    return ("convert rejected this bundle (" + "; ".join(missed) + "); it is not meant to "
            "ship: improve the model or its calibration and convert again")
