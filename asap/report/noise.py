"""Run-to-run noise: the same generator config trained with two seeds (params.yaml `baselines` entry
``{repeat: <generator>, seed: N}``), and whether a difference between two results exceeds it.

The noise of a metric is the spread of its values over the seeds of one config, |m(seed a) - m(seed b)|
for two seeds (max - min for more). With one repeated config it is the only estimate there is, and the
report applies it to every comparison of generators trained with the same budget: a difference at or
below it is "within seed noise", i.e. not shown to be more than training luck. Two seeds give a crude
estimate (one sample of the difference of two runs), so a difference just above it is not strong
evidence either; the README says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

METRICS = {"fid": "FID", "kid_mean": "KID", "pixel_acc": "pixel acc", "miou": "mIoU"}  # column -> name
NOT_MEASURED = "run-to-run noise not measured (add a `repeat:` entry to baselines)"
WITHIN = "within seed noise"


@dataclass
class SeedNoise:
    """The spread of each metric over the seeds of one generator config."""
    generator: str                       # the repeated generator (its name in params.yaml)
    runs: list[str]                      # the runs of its config: the generator and its repeats
    seeds: list[float]                   # their train.seed, in the same order
    spread: dict[str, float]             # metric column -> max - min over the runs
    steps: list[float] = field(default_factory=list)          # steps each run reached
    train_seconds: list[float] = field(default_factory=list)  # seconds each run trained
    budget_s: float = math.nan           # the time budget they had (NaN: steps decided)
    devices: list[str] = field(default_factory=list)          # where they trained

    def budget(self) -> str:
        """"180 s (steps 68, 70; 182-183 s on cpu)": the budget the noise was measured at."""
        cap = f"{self.budget_s:g} s" if self.budget_s == self.budget_s else "a step budget"
        steps = ", ".join(f"{s:.0f}" for s in self.steps if s == s) or "?"
        secs = [s for s in self.train_seconds if s == s]
        spent = (f"{min(secs):.0f}" + (f"-{max(secs):.0f}" if round(max(secs)) != round(min(secs)) else "") + " s"
                 if secs else "? s")
        return f"{cap} (steps {steps}; {spent} on {', '.join(self.devices) or 'a device not recorded'})"


def seed_noise(gens: pd.DataFrame) -> dict[str, SeedNoise]:
    """One SeedNoise per generator that has an evaluated repeat (``gens``: asap.report.inputs
    GENERATOR_COLUMNS, role "repeat" with ``repeat_of`` naming the generator); {} when none has."""
    evaluated = gens[gens["has_eval"].astype(bool)]
    out = {}
    for target in dict.fromkeys(evaluated.loc[evaluated["role"] == "repeat", "repeat_of"]):
        runs = evaluated[(evaluated["name"] == target) | ((evaluated["role"] == "repeat") &
                                                          (evaluated["repeat_of"] == target))]
        if len(runs) < 2 or target not in set(runs["name"]):
            continue  # the repeat is evaluated, the generator it repeats is not (or the other way round)
        spread = {m: float(runs[m].max() - runs[m].min()) if runs[m].notna().sum() >= 2 else math.nan
                  for m in METRICS}
        budgets = runs["time_budget_s"].dropna()
        out[target] = SeedNoise(target, runs["name"].tolist(), runs["seed"].tolist(), spread,
                                runs["steps"].tolist(), runs["train_seconds"].tolist(),
                                float(budgets.iloc[0]) if not budgets.empty else math.nan,
                                sorted(set(d for d in runs["train_device"] if d)))
    return out


def not_measured(gens: pd.DataFrame) -> str:
    """Why there is no noise estimate: no `repeat:` entry at all (NOT_MEASURED), or one whose runs are
    not evaluated yet (naming the stages that would measure it)."""
    repeats = gens[gens["role"] == "repeat"]
    if repeats.empty:
        return NOT_MEASURED
    names = [*repeats["name"], *repeats["repeat_of"]]
    todo = gens[gens["name"].isin(names) & ~gens["has_eval"].astype(bool)]
    stages = " ".join(f"evaluate-baseline@{n}" if r == "repeat" or r == "baseline" else "evaluate"
                      for n, r in zip(todo["name"], todo["role"]))
    return (f"run-to-run noise not measured yet (the `repeat:` entry {', '.join(repeats['name'])} needs its eval "
            f"files: `dvc repro {stages or 'report'}`)")


def pooled(noises: dict[str, SeedNoise]) -> dict[str, float]:
    """The noise every comparison is judged against: per metric the largest spread measured (one
    repeated config: its spread). Empty without a repeat."""
    out = {}
    for m in METRICS:
        values = [n.spread[m] for n in noises.values() if n.spread[m] == n.spread[m]]
        if values:
            out[m] = max(values)
    return out


def within(difference: float, noise: float | None) -> bool | None:
    """True when |difference| <= noise (not shown to exceed training luck), False when above, None
    when either is unknown."""
    if noise is None or difference is None or math.isnan(noise) or math.isnan(difference):
        return None
    return abs(difference) <= noise


def metrics_file(noises: dict[str, SeedNoise]) -> dict:
    """noise/seed-noise.json (a DVC metric, numbers only): per repeated generator the spread of each
    metric, the number of seeds and the steps they reached; {} without a repeat."""
    return {name: {**{m: n.spread[m] for m in METRICS if n.spread[m] == n.spread[m]}, "seeds": len(n.runs),
                   **({"steps_min": min(s for s in n.steps if s == s)} if any(s == s for s in n.steps) else {}),
                   **({"time_budget_s": n.budget_s} if n.budget_s == n.budget_s else {})}
            for name, n in noises.items()}
