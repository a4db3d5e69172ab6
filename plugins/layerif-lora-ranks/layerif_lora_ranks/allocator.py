"""The ``lora_ranks`` allocator: an integer LoRA rank per layer under an exact parameter budget.

Budget. A LoRA adapter of rank r on a linear map ``d_in → d_out`` has ``r·(d_in + d_out)``
parameters (A: ``r × d_in``, B: ``d_out × r``). With ``c_l`` the sum of ``d_in + d_out`` over layer
l's target modules, the budget is the parameter count of the uniform adapter, ``B = r · Σ_l c_l``,
and the ranks ``r_l`` must meet it exactly: ``Σ_l c_l · r_l = B``.

Shares, as the expert allocator (``alphalora_experts``, AlphaLoRA / LayerIF): ``w_l`` the layer's
worse-ness (``LayerScores.worseness()``, min-max normalised to [0, 1] by default) and
``v_l = w_l ** (beta / temperature)``. The continuous ranks are

    x_l = min(m_hi, m_lo + k · v_l),   k such that Σ_l c_l · x_l = B

(water-filling: a layer that would pass the maximum is held there and the others share the rest;
all ``v_l = 0``, i.e. constant scores, means equal shares, so the uniform rank comes back). A layer
judged worse trained gets a larger rank; the best layer gets the minimum when ``w`` is min-maxed.

Integer ranks on the grid ``m_lo, m_lo + q, …`` (``q`` = ``multiple_of``; ``m_lo`` is ``min_rank``
rounded up to a multiple of q, ``m_hi`` is ``max_rank`` rounded down): each layer starts from the
floor of its continuous rank on that grid; the parameters left over (a whole number of grid steps,
or the budget is unreachable and the error says why) are handed out by largest remainder on
parameter units, kept monotone: a layer with a larger continuous rank never ends with a smaller
integer rank. Ties: layers with the same continuous rank (equal scores) form a group that moves
together (every layer of the group the same number of steps from its floor: −1..+2, wider only
when layers differ in cost); among the choices of group moves that meet the budget exactly and keep
the ranks monotone, the one closest to the continuous ranks in parameters
(``Σ_l c_l · |r_l − x_l|``) wins, which for equal layer costs and no ties is exactly Hamilton's
largest-remainder rule. Only when no choice of whole groups meets the budget is a group split,
the earlier layer taking the extra step. When layers differ in cost, the monotone order can make
the exact budget unreachable; then the exact budget wins and the order is given up (never with
equal layer costs, where Hamilton's rounding is monotone). So equal scores get equal ranks
whenever exactness allows it, at the price, in small cases, of a remainder that goes past a larger
fractional part (e.g. continuous ranks [2.5, 2.5, 1] with one step left give [2, 2, 2], not
Hamilton's [3, 2, 1]).

With ``per_module_type`` every module type (each name of ``target_modules``) has its own budget
and allocation; otherwise one rank per layer covers all its target modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from layerif_core.allocators.experts import normalized_worseness
from layerif_core.errors import ConfigError, DataError
from layerif_core.results import Allocation, LayerScores
from layerif_lora_ranks.options import RankOptions

DEFAULT_RANK = 8  # finetune.rank's default, used when neither the options nor a budget give r
# steps an item may move from its floor: tried in this order of widening ranges (wider ones only
# matter when layers differ in cost, where small moves may not add up to the budget)
SPANS = ((-1, 2), (-4, 5), (-12, 13))
MAX_DP_STATES = 2_000_000
TIE_RULE = ("layers with equal continuous ranks move together (whole groups, ranks monotone in the "
            "continuous ranks, closest to them in parameters); a group is split, earlier layer "
            "first, only when no choice of whole groups meets the budget exactly")


@dataclass(frozen=True)
class RankBudget:
    """What the adapter costs: per module type, ``d_in + d_out`` summed over that type's modules in
    each layer (0 where the layer has none), and the uniform rank r of that type."""

    costs: dict[str, list[int]]
    ranks: dict[str, int]

    def params(self) -> int:
        """LoRA parameters of the uniform adapter: ``Σ_type r_type · Σ_l c_type,l``."""
        return sum(self.ranks[t] * sum(c) for t, c in self.costs.items())

    @classmethod
    def equal(cls, opts: RankOptions, n_layers: int) -> RankBudget:
        """The budget when the model is not known: every layer costs one unit per rank."""
        ranks = opts.rank if isinstance(opts.rank, dict) else {"all": opts.rank or DEFAULT_RANK}
        return cls({t: [1] * n_layers for t in ranks}, dict(ranks))


def shares(scores: LayerScores, opts: RankOptions) -> tuple[list[float], list[float]]:
    """The worse-ness ``w`` (as ``alphalora_experts`` computes it) and the shares ``w^(β/T)``."""
    w = normalized_worseness(scores, opts.normalize)
    v = w.pow(opts.beta / opts.temperature)
    return [float(x) for x in w.tolist()], [float(x) for x in v.tolist()]


def continuous_ranks(v: list[float], costs: list[int], budget: int, lo: int, hi: int | None
                     ) -> list[Fraction]:
    """``x_l = min(hi, lo + k·v_l)`` with ``Σ c_l x_l = budget`` (exact rationals; ``x_l = 0`` where
    ``c_l = 0``). Assumes ``Σ c_l·lo <= budget <= Σ c_l·hi``."""
    active = [i for i, c in enumerate(costs) if c > 0]
    share = {i: Fraction(v[i]) for i in active}
    if all(s == 0 for s in share.values()):
        share = {i: Fraction(1) for i in active}
    free, at_hi = set(active), set()
    k = Fraction(0)
    while free:
        rest = budget - sum(costs[i] * hi for i in at_hi) - sum(costs[i] * lo for i in free)
        denom = sum(costs[i] * share[i] for i in free)
        if denom == 0:  # only zero-share layers left below the maximum: they share the rest evenly
            if rest == 0:
                break
            share.update({i: Fraction(1) for i in free})
            continue
        k = Fraction(rest) / denom
        over = {i for i in free if hi is not None and lo + k * share[i] > hi}
        if not over:
            break
        free -= over
        at_hi |= over
    x = [Fraction(0)] * len(costs)
    for i in active:
        x[i] = Fraction(hi) if i in at_hi else lo + k * share[i]
    return x


def _grid(opts: RankOptions) -> tuple[int, int | None, int]:
    q = opts.multiple_of
    lo = -(-opts.min_rank // q) * q
    hi = None if opts.max_rank is None else opts.max_rank // q * q
    if hi is not None and hi < lo:
        raise ConfigError(f"no multiple of {q} lies in [min_rank {opts.min_rank}, max_rank "
                          f"{opts.max_rank}]; widen the bounds or lower multiple_of.")
    return lo, hi, q


def check_bounds(rank: int, opts: RankOptions, what: str = "the adapter") -> tuple[int, int | None, int]:
    """The rank grid ``(lo, hi, q)``; an error when the uniform rank ``rank`` (whose budget is
    ``rank · Σ c_l``) lies below the minimum or above the maximum in every layer."""
    lo, hi, q = _grid(opts)
    if rank < lo:
        raise ConfigError(f"the budget of {what} (uniform rank {rank}) is below min_rank {lo} in every "
                          f"layer; lower min_rank to at most {rank} or raise the rank.")
    if hi is not None and rank > hi:
        raise ConfigError(f"the budget of {what} (uniform rank {rank}) is above max_rank {hi} in every "
                          f"layer; raise max_rank to at least {rank} or lower the rank.")
    return lo, hi, q


def exact_ranks(v: list[float], costs: list[int], rank: int, opts: RankOptions, what: str = "the adapter"
                ) -> list[int]:
    """Integer ranks (0 where ``c_l = 0``) with ``Σ c_l r_l = rank · Σ c_l`` exactly (module doc)."""
    lo, hi, q = check_bounds(rank, opts, what)
    budget = rank * sum(costs)
    floor_params = lo * sum(costs)
    active = [i for i, c in enumerate(costs) if c > 0]
    step = {i: costs[i] * q for i in active}  # parameters of one grid step of layer i
    g = math.gcd(*step.values())
    spare = budget - floor_params
    if spare % g:
        raise ConfigError(f"the budget of {what} (uniform rank {rank}) cannot be met exactly with ranks "
                          f"that are multiples of {q}: every rank step costs a multiple of {g} "
                          f"parameters and the {spare} above min_rank are not; use a rank divisible by "
                          f"{q} or multiple_of: 1.")
    x = continuous_ranks(v, costs, budget, lo, hi)
    y = {i: (x[i] - lo) / q for i in active}  # continuous grid steps above lo
    top = None if hi is None else (hi - lo) // q
    base = {i: math.floor(y[i]) for i in active}
    left = (spare - sum(step[i] * base[i] for i in active)) // g  # grid units still to hand out
    groups: dict[Fraction, list[int]] = {}
    for i in active:
        groups.setdefault(y[i], []).append(i)
    order = sorted(active, key=lambda i: (y[i], i))
    # whole tie groups first; then single layers; then, when layers differ in cost, without the
    # monotone order (the exact budget comes first)
    tries = [(items, span, True) for items in ([groups[v] for v in sorted(groups)],
                                               [[i] for i in order]) for span in SPANS]
    tries += [([[i] for i in order], span, False) for span in SPANS]
    for items, span, monotone in tries:
        moves = _fill(items, base, y, step, g, top, left, span, monotone)
        if moves is not None:
            ranks = [0] * len(costs)
            for item, d in zip(items, moves, strict=True):
                for i in item:
                    ranks[i] = lo + q * (base[i] + d)
            assert sum(c * r for c, r in zip(costs, ranks, strict=True)) == budget
            return ranks
    raise ConfigError(f"no ranks in multiples of {q} within [{lo}, {hi or 'no maximum'}] and "
                      f"{SPANS[-1][1]} steps of the proportional ranks meet the budget of {what} "
                      f"({budget} parameters) exactly with these layer sizes; set multiple_of: 1 or "
                      "per_module_type: true.")


def _fill(items: list[list[int]], base: dict[int, int], y: dict[int, Fraction], step: dict[int, int],
          g: int, top: int | None, target: int, span: tuple[int, int], monotone: bool = True
          ) -> list[int] | None:
    """One move per item (every layer of it the same number of steps from its floor) whose grid
    units sum to ``target``, with the least ``Σ step_l · |base_l + d − y_l|``, and ranks that never
    fall as the continuous rank rises; None if none exists. ``items`` come in order of rising ``y``;
    among equally close choices the extra steps go to the earlier layers.

    A knapsack by dynamic programming over the items. A state is (units handed out, the highest
    level of the items with a smaller ``y``, the highest level among the current ``y``'s items);
    its value is (distance, Σ layer index · move), compared in that order."""
    Key = tuple[int, int, int]
    Value = tuple[float, int, "Key | None", int]
    states: dict[Key, Value] = {(0, -1, -1): (0.0, 0, None, 0)}
    history = []
    prev_y = None
    for item in items:
        units = sum(step[i] for i in item) // g
        level0, y0 = base[item[0]], y[item[0]]
        rising = prev_y is not None and y0 > prev_y
        prev_y = y0
        new: dict[Key, Value] = {}
        for d in sorted(range(span[0], span[1] + 1), key=abs):
            level = level0 + d
            if level < 0 or (top is not None and level > top):
                continue
            cost = sum(float(step[i] * abs(level - y[i])) for i in item)
            order = sum(i for i in item) * d
            for (net, floor, group), (acc, tb, _, _) in states.items():
                below = max(floor, group) if rising else floor
                if monotone and level < below:
                    continue
                key = (net + d * units, below, level if rising else max(group, level))
                total, tie = acc + cost, tb + order
                old = new.get(key)
                if old is None or total < old[0] - 1e-9 or (total <= old[0] + 1e-9 and tie < old[1]):
                    new[key] = (total, tie, (net, floor, group), d)
        if len(new) > MAX_DP_STATES:
            raise DataError(f"the rank allocation needs more than {MAX_DP_STATES} states; use "
                            "multiple_of: 1 or per_module_type: true.")
        history.append(new)
        states = new
    ends = [k for k in states if k[0] == target]
    if not ends:
        return None
    best = min(states[k][0] for k in ends)
    key: Key | None = min((k for k in ends if states[k][0] <= best + 1e-9), key=lambda k: states[k][1])
    moves = []
    for stage in reversed(history):
        _, _, key, d = stage[key]
        moves.append(d)
    return moves[::-1]


class LoraRankAllocator:
    """LoRA rank per layer ∝ worse-ness^beta above min_rank, under a uniform adapter's exact budget."""

    def __init__(self, opts: RankOptions | None):
        self.opts = opts or RankOptions()

    def allocate(self, scores: LayerScores, weights: list[float] | None = None,
                 budget: RankBudget | None = None) -> Allocation:
        """Ranks for ``scores``. ``budget`` holds the model's per-layer LoRA costs (the application
        passes it); without it every layer costs the same, which is exact for models whose layers
        all hold the same target modules. ``weights`` (tracked parameters per layer) are not used:
        a LoRA budget counts ``d_in + d_out`` per rank, not the layer's weights."""
        o = self.opts
        n_layers = scores.values.numel()
        budget = budget or RankBudget.equal(o, n_layers)
        bad = {t: len(c) for t, c in budget.costs.items() if len(c) != n_layers}
        if bad:
            raise DataError(f"the scores have {n_layers} layers but the adapter's modules span "
                            f"{next(iter(bad.values()))}; use scores computed for this model.")
        w, v = shares(scores, o)
        if o.per_module_type:
            ranks = {t: exact_ranks(v, c, budget.ranks[t], o, f"module type '{t}'")
                     for t, c in budget.costs.items()}
        else:
            total = [sum(c[i] for c in budget.costs.values()) for i in range(n_layers)]
            uniform = budget.params() / sum(total)
            if uniform != int(uniform):
                raise ConfigError(f"the uniform ranks {budget.ranks} give {uniform:.3f} parameters per "
                                  "rank unit, not a whole rank; use per_module_type: true.")
            one = exact_ranks(v, total, int(uniform), o)
            ranks = {t: [r if c[i] else 0 for i, r in enumerate(one)] for t, c in budget.costs.items()}
        per_layer = _layer_ranks(ranks, budget.costs)
        params = sum(r * c for t in ranks for r, c in zip(ranks[t], budget.costs[t], strict=True))
        return Allocation("lora_ranks", per_layer, "lora_ranks", {
            "ranks": ranks, "uniform_rank": budget.ranks, "costs": budget.costs,
            "params": params, "budget": budget.params(), "per_module_type": o.per_module_type,
            "min_rank": o.min_rank, "max_rank": o.max_rank, "multiple_of": o.multiple_of,
            "beta": o.beta, "temperature": o.temperature, "normalize": o.normalize,
            "worseness": w, "scorer": scores.scorer, "tie_rule": TIE_RULE,
            "options": o.model_dump(), "scores": scores.to_json()})


def _layer_ranks(ranks: dict[str, list[int]], costs: dict[str, list[int]]) -> list[float]:
    """One number per layer: its rank, or the cost-weighted mean rank over its module types."""
    out = []
    for i in range(len(next(iter(costs.values())))):
        c = sum(costs[t][i] for t in costs)
        out.append(0.0 if c == 0 else round(sum(ranks[t][i] * costs[t][i] for t in costs) / c, 4))
    return [int(x) if x == int(x) else x for x in out]
