"""Number formatting shared by the terminal tables, the Markdown summary and the HTML report.

One formatter per kind of figure, so a value reads the same everywhere; a figure that was not measured
prints as an em dash, never as 0 or nan.
"""

from __future__ import annotations

import math

MISSING = "—"


def ok(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def num(x: object, digits: int = 3) -> str:
    """A figure with ``digits`` significant digits, thousands separated."""
    if not ok(x):
        return MISSING
    v = float(x)  # type: ignore[arg-type]
    if v == 0:
        return "0"
    if abs(v) >= 10 ** digits:
        return f"{v:,.0f}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(v)))))
    return f"{v:,.{decimals}f}"


def ms(x: object) -> str:
    return num(x, 3)


def usd(x: object) -> str:
    if not ok(x):
        return MISSING
    v = float(x)  # type: ignore[arg-type]
    if abs(v) >= 1000:
        return f"${v:,.0f}"
    return f"${v:,.2f}" if abs(v) >= 100 else "$" + num(v, 3)


def pct(x: object, signed: bool = True) -> str:
    if not ok(x):
        return MISSING
    v = float(x)  # type: ignore[arg-type]
    return f"{v:+.1f} %" if signed else f"{v:.1f} %"


def rate(x: object) -> str:
    """An error rate (fraction) as a percentage."""
    if not ok(x):
        return MISSING
    v = float(x) * 100  # type: ignore[arg-type]
    return "0 %" if v == 0 else f"{v:.2f} %"


def ci(low: object, high: object) -> str:
    if not ok(low) or not ok(high):
        return MISSING
    return f"[{ms(low)}, {ms(high)}]"


def by_unit(x: object, unit: str) -> str:
    """Format a comparison figure according to its unit."""
    if unit == "USD":
        return usd(x)
    if unit == "fraction":
        return rate(x)
    if unit == "count":
        return f"{float(x):,.0f}" if ok(x) else MISSING  # type: ignore[arg-type]
    if unit == "FLOPs":
        return si(x)
    return num(x)


def si(x: object) -> str:
    """A large count with an SI prefix: 1.23 G, 456 M."""
    if not ok(x):
        return MISSING
    v = float(x)  # type: ignore[arg-type]
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{num(v / factor)} {prefix}"
    return num(v)
