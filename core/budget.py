"""Fit an architecture to a parameter budget by choosing its width.

Every architecture's config has a ``width_mult`` that scales all its channel
counts (rounded to multiples of 4, see ``scale_channels``), so the parameter
count is a non-decreasing step function of it. A bisection finds the widths
just below and just above the budget, and the closer one wins. Kernel shapes,
strides, depth and everything else in the config stay as the user set them.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError
from core.models import check_model_size, normalize_model_config

PRESET_BUDGETS = {"8k": 8_000, "68k": 68_000, "210k": 210_000}
TOLERANCE = 0.03  # a fitted count within 3% of the budget is a match
MIN_BUDGET, MAX_BUDGET = 100, 20_000_000
WIDTH_RANGE = (1 / 64, 32.0)
BISECTION_STEPS = 30
WIDTH_DECIMALS = 4  # stored width_mult values stay readable
REFINE_BELOW = 0.01  # a width fit farther off than 1% is refined stage by stage
REFINE_ROUNDS = 6
FINE_KNOBS = ("stem_channels", "head_channels", "conv_channels", "primary_channels", "mlp_dim", "decoder_hidden")


@dataclass
class BudgetFit:
    config: dict[str, Any]  # the complete model config with the fitted width_mult
    budget: int
    params: int

    @property
    def error(self) -> float:
        """Relative distance from the budget: +0.02 is 2% above it."""
        return self.params / self.budget - 1

    @property
    def within(self) -> bool:
        return abs(self.error) <= TOLERANCE

    def describe(self) -> str:
        arch, width = self.config["arch"], self.config["width_mult"]
        if self.within:
            return f"{arch}: {self.params:,} parameters ({self.error:+.1%} of {self.budget:,}) at width_mult {width}"
        return (
            f"{arch} cannot reach {self.budget:,} parameters within {TOLERANCE:.0%} with this config: the nearest "
            f"reachable count is {self.params:,} ({self.error:+.1%}) at width_mult {width}; change its kernel shapes, "
            "stages or blocks, or pick another budget"
        )


def parse_budget(text: str | int) -> int:
    """Parse '68k', '68,000', '0.21m' or 68000 into a parameter count, naming the value when it fails."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?)\s*([kKmM]?)\s*", str(text))
        if not match:
            raise ConfigError(
                f"budget {text!r} is not a parameter count; write a number such as 68000, 68k or 0.2m "
                f"(presets: {', '.join(PRESET_BUDGETS)})"
            )
        number = float(match.group(1).replace(",", "").replace("_", ""))
        scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
        value = round(number * scale)
    if not MIN_BUDGET <= value <= MAX_BUDGET:
        raise ConfigError(f"budget {value:,} is outside {MIN_BUDGET:,} to {MAX_BUDGET:,} parameters; pick one in that range")
    return value


def _params_at(config: dict[str, Any], width: float) -> int | None:
    """Parameters of ``config`` at ``width``, or None when that width is impossible (zero channels)."""
    try:
        return check_model_size({**config, "width_mult": width})
    except ConfigError:
        return None


def fit_budget(model_config: dict[str, Any], budget: int | str) -> BudgetFit:
    """Return the config whose ``width_mult`` brings its parameter count closest to ``budget``.

    A config already within TOLERANCE of the budget is returned unchanged.

    When the rest of the config makes the budget unreachable, the result misses
    it by more than TOLERANCE (``fit.within`` is false), and ``fit.describe()``
    names the nearest reachable count.
    """
    budget = parse_budget(budget)
    config = normalize_model_config(copy.deepcopy(model_config))
    current = BudgetFit(config, budget, check_model_size(config))
    if current.within:  # already on budget: keep the config exactly as given
        return current

    low, high = WIDTH_RANGE
    low_params = _params_at(config, low)
    while low_params is None and low < high:  # the narrowest width that still builds
        low *= 1.5
        low_params = _params_at(config, low)
    if low_params is None:
        raise ConfigError(f"{config['arch']} does not build at any width_mult; check its config")
    high_params = _params_at(config, high)
    if low_params >= budget:
        return BudgetFit({**config, "width_mult": round(low, WIDTH_DECIMALS)}, budget, low_params)
    if high_params is not None and high_params < budget:
        return BudgetFit({**config, "width_mult": high}, budget, high_params)

    # Invariant: params(low) < budget <= params(high).
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        params = _params_at(config, middle)
        if params is not None and params >= budget:
            high, high_params = middle, params
        else:
            low, low_params = middle, params if params is not None else low_params

    below = BudgetFit({**config, "width_mult": _tidy(config, low, low_params)}, budget, low_params)
    above = BudgetFit({**config, "width_mult": _tidy(config, high, high_params)}, budget, high_params)
    best = min((below, above), key=lambda fit: abs(fit.error))
    return best if abs(best.error) <= REFINE_BELOW else _refine(best)


def _tidy(config: dict[str, Any], width: float, params: int) -> float:
    """Round ``width`` to few decimals when that keeps the same parameter count."""
    for decimals in range(2, WIDTH_DECIMALS + 3):
        scale = 10**decimals
        for rounded in (round(width * scale) / scale, math.floor(width * scale) / scale, math.ceil(width * scale) / scale):
            if _params_at(config, rounded) == params:
                return rounded
    return width


def _knobs(config: dict[str, Any]) -> list[tuple]:
    """Paths of the whole-number channel settings that the fine fit may move one at a time."""
    paths: list[tuple] = []
    for key, value in config.items():
        if key in FINE_KNOBS and isinstance(value, int):
            paths.append((key,))
        elif key == "hidden_sizes" and isinstance(value, list):
            paths += [(key, i) for i in range(len(value))]
        elif key == "stages" and isinstance(value, list):
            paths += [(key, i, "channels") for i, stage in enumerate(value) if isinstance(stage.get("channels"), int)]
    return paths


def _get(config: dict[str, Any], path: tuple) -> Any:
    value: Any = config
    for part in path:
        value = value[part]
    return value


def _with(config: dict[str, Any], path: tuple, new: Any) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    target = changed
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = new
    return changed


def _next_count(config: dict[str, Any], path: tuple, direction: int, params: int) -> tuple[dict[str, Any], int] | None:
    """Return the nearest change of one knob, in ``direction``, that changes the parameter count."""
    base = _get(config, path)
    # One rounding step of the scaled count (up to 4 channels) may take 4 / width_mult base steps.
    for step in range(1, math.ceil(8 / config["width_mult"]) + 2):
        value = base + direction * step
        if value < 1:
            return None
        candidate = _with(config, path, value)
        count = _params_at(candidate, candidate["width_mult"])
        if count is not None and count != params:
            return candidate, count
    return None


def _moves(fit: BudgetFit) -> list[BudgetFit]:
    """Return every config one knob step away from ``fit``, with its parameter count."""
    moves = []
    for path in _knobs(fit.config):
        for direction in (-1, 1):
            found = _next_count(fit.config, path, direction, fit.params)
            if found is not None:
                moves.append(BudgetFit(found[0], fit.budget, found[1]))
    return moves


def _refine(fit: BudgetFit) -> BudgetFit:
    """Move single channel settings by one rounding step at a time while that brings the count closer.

    Width alone moves every stage together, so its steps can be coarse at small
    budgets; one stage at a time fills the gaps between them.
    """
    best = fit
    for _ in range(REFINE_ROUNDS):
        singles = _moves(best)
        # A pair of moves (one stage up, another down) reaches counts that no single move does.
        pairs = [move for single in singles for move in _moves(single)] if not any(
            abs(c.error) < abs(best.error) for c in singles
        ) else []
        closer = min(singles + pairs, key=lambda c: abs(c.error), default=None)
        if closer is None or abs(closer.error) >= abs(best.error):
            break
        best = closer
        if abs(best.error) <= REFINE_BELOW:
            break
    return best
