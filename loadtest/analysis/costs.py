"""Cost, energy and carbon per unit of work, from a validated cost file and the measured capacity.

Prices are inputs (list prices the user can override), never measurements; the output says which
instance, price basis and date were used. Formulas (docs/method.md):
cost per 1M tokens = $/hour / (tokens/s at budget x 3600) x 1e6, per 1k requests likewise with QPS;
energy per 1M tokens = energy over the measured window / tokens in it x 1e6; CO2e = kWh x grid g/kWh.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loadtest.errors import LoadtestError

DEFAULT_COST_FILE = Path(__file__).resolve().parent.parent / "data" / "costs.yaml"
DEFAULT_GRID_G_PER_KWH = 475.0  # world average, IEA; state it wherever it is used


class Instance(BaseModel):
    """One priced machine type."""

    model_config = ConfigDict(extra="forbid")

    name: str
    provider: str
    region: str | None = None
    usd_per_hour: float | None = Field(None, gt=0)
    usd_per_accelerator_hour: float | None = Field(None, gt=0)
    accelerator: str
    accelerators: int = Field(ge=0)
    board_power_w: float | None = Field(None, gt=0)
    declared_power_w: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_price(self) -> "Instance":
        if (self.usd_per_hour is None) == (self.usd_per_accelerator_hour is None):
            raise ValueError("give exactly one of usd_per_hour or usd_per_accelerator_hour")
        if self.usd_per_accelerator_hour is not None and self.accelerators < 1:
            raise ValueError("usd_per_accelerator_hour needs accelerators >= 1")
        return self

    @property
    def hourly_usd(self) -> float:
        """The instance's price per hour (accelerators x per-accelerator price where that is given)."""
        if self.usd_per_hour is not None:
            return self.usd_per_hour
        return self.accelerators * float(self.usd_per_accelerator_hour)


class CostBook(BaseModel):
    """The whole cost file."""

    model_config = ConfigDict(extra="forbid")

    prices_as_of: str
    price_basis: str = "list price, on-demand"
    currency: str = "USD"
    default_instance: str
    hours_per_month: float = Field(730.0, gt=0)
    instances: list[Instance] = Field(min_length=1)

    @model_validator(mode="after")
    def _default_exists(self) -> "CostBook":
        names = [i.name for i in self.instances]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate instance name(s): {', '.join(dupes)}")
        if self.default_instance not in names:
            raise ValueError(f"default_instance {self.default_instance!r} is not one of the instances")
        return self

    def instance(self, name: str | None) -> Instance:
        wanted = name or self.default_instance
        for inst in self.instances:
            if inst.name == wanted:
                return inst
        names = [i.name for i in self.instances]
        close = difflib.get_close_matches(wanted, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(names)})"
        raise LoadtestError(f"instance {wanted!r} is not in the cost file{hint}")

    @property
    def basis(self) -> str:
        return f"{self.price_basis}, as of {self.prices_as_of}"


def _field_path(loc: tuple) -> str:
    """pydantic's error location as the user wrote it: ``instances[2].usd_per_hr``."""
    return "".join(f"[{item}]" if isinstance(item, int) else f".{item}" for item in loc).lstrip(".")


def load_cost_book(path: Path | None = None) -> CostBook:
    """Read and validate a cost file; any mistake is one line naming the file and the field."""
    import yaml

    path = Path(path) if path else DEFAULT_COST_FILE
    if not path.exists():
        raise LoadtestError(f"cost file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LoadtestError(f"cost file {path} is not UTF-8 text: give the YAML cost file itself") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise LoadtestError(f"cost file {path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise LoadtestError(f"cost file {path}: expected a mapping with prices_as_of, default_instance, instances")
    try:
        return CostBook.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _field_path(tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            field = str(err["loc"][-1])
            known = list(Instance.model_fields) if "instances" in err["loc"] else list(CostBook.model_fields)
            close = difflib.get_close_matches(field, known, n=1)
            msg = f"unknown field{f' (did you mean {close[0]}?)' if close else ''}"
        elif err["type"] == "missing":
            msg = "required field missing"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise LoadtestError(f"cost file {path}: {where or 'top level'}: {msg}{more}") from None


@dataclass(frozen=True)
class CostFigures:
    """One model's cost, energy and carbon figures."""

    model: str
    instance: str
    accelerator: str
    accelerators: int
    usd_per_hour: float
    price_basis: str
    cost_per_1m_tokens_usd: float | None
    cost_per_1k_requests_usd: float | None
    energy_j: float | None  # over the measured window
    energy_window_s: float | None
    energy_per_1m_tokens_j: float | None
    energy_method: str  # "counter ...", "integrated ...", "declared 35 W (estimate)", or why none
    energy_is_estimate: bool
    grid_g_per_kwh: float
    co2e_g_per_1m_tokens: float | None


def cost_per_million_tokens(usd_per_hour: float, tokens_per_s: float) -> float:
    """$/hour / (tokens/s x 3600) x 1e6."""
    return usd_per_hour / (tokens_per_s * 3600.0) * 1e6


def cost_per_thousand_requests(usd_per_hour: float, qps: float) -> float:
    """$/hour / (requests/s x 3600) x 1e3."""
    return usd_per_hour / (qps * 3600.0) * 1e3


def co2e_grams(joules: float, grid_g_per_kwh: float) -> float:
    """Energy (J) -> kWh -> grams CO2e at the given grid intensity."""
    return joules / 3.6e6 * grid_g_per_kwh


def cost_figures(
    model: str,
    inst: Instance,
    basis: str,
    *,
    qps_at_budget: float | None,
    tokens_per_s_at_budget: float | None,
    energy_j: float | None,
    energy_window_s: float | None,
    tokens_in_window: float | None,
    energy_method: str,
    energy_is_estimate: bool,
    grid_g_per_kwh: float,
) -> CostFigures:
    """Combine capacity and measured energy into the per-unit figures; missing inputs stay missing."""
    hourly = inst.hourly_usd
    per_tok = cost_per_million_tokens(hourly, tokens_per_s_at_budget) if tokens_per_s_at_budget else None
    per_req = cost_per_thousand_requests(hourly, qps_at_budget) if qps_at_budget else None
    e_per_tok = energy_j / tokens_in_window * 1e6 if energy_j is not None and tokens_in_window else None
    co2 = co2e_grams(e_per_tok, grid_g_per_kwh) if e_per_tok is not None else None
    return CostFigures(
        model, inst.name, inst.accelerator, inst.accelerators, hourly, basis, per_tok, per_req,
        energy_j, energy_window_s, e_per_tok, energy_method, energy_is_estimate, grid_g_per_kwh, co2,
    )


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
