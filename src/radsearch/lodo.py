"""Leave-one-dataset-out (LODO) choice of a configuration (encoder + recipe).

A configuration chosen on one benchmark must also help on the next archive, where
nobody has labels to tune with. LODO measures that: for each value of a column
(RadBench's ``dataset``) in turn, the configuration is chosen on the *other* values'
rows only (their ``train`` rows are the index, their ``val`` rows the queries); the
held-out rows are dropped before the choice starts, so none of their labels (nor
their images) is read. The choice is then scored on the held-out value's ``test``
queries against the full ``train`` index, next to the plain baseline encoder.

Choosing within one fold: every candidate encoder is screened (plain and with
whitening), the ``screen`` best get a greedy recipe search under the tune objective
(:mod:`radsearch.selection`), and the winner must beat the plain baseline under that
same objective; otherwise the baseline stays. Scoring always goes through
:func:`radsearch.search.knn_rows` and the protocol's modified precision.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from radsearch.errors import RadsearchError
from radsearch.recipe import Recipe
from radsearch.selection import (
    METRICS,
    RecipeTrials,
    get_objective,
    greedy_search,
    query_scores,
    scratch,
)

BASELINE = "efficientnet-lite0"
# the tune grid without local whitening (never kept on RadBench val) and k-reciprocal
# re-ranking (a minute per trial on a 2-core CPU): seven folds x every encoder must fit
LODO_STEPS = ("whiten", "dba", "qe")
# neighbours per selection query: what ``radsearch search -k 10`` fetches (query
# expansion re-scores 50 candidates); the held-out figures use evaluate's 100
SELECTION_K = 10
SCREEN_STEPS = {"whiten": {"power": 1.0, "shrinkage": 0.1, "dim": 256}}


def lodo_grid(name: str = "default") -> dict:
    from radsearch.tune import GRIDS

    return {s: GRIDS[name][s] for s in LODO_STEPS if s in GRIDS[name]}


def fuse(members: list[np.ndarray]) -> np.ndarray:
    """What ``--model fusion:A+B`` computes: unit-length members, equal weights
    ``1/sqrt(m)``, concatenated (the fused cosine is the mean of the members')."""
    parts = [m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12) for m in members]
    return (np.concatenate(parts, axis=1) / np.sqrt(len(parts))).astype(np.float32)


@dataclass
class Choice:
    """A configuration and how it was chosen."""

    encoder: str
    steps: dict
    selection: dict = field(default_factory=dict)  # figures on the selection queries
    baseline_selection: dict = field(default_factory=dict)
    confidence: float | None = None
    log: list[str] = field(default_factory=list)

    def describe(self) -> str:
        recipe = Recipe(self.steps).describe()
        return f"{self.encoder} + {recipe}" if self.encoder else f"recipe {recipe}"

    def key(self) -> str:
        return json.dumps([self.encoder, self.steps], sort_keys=True)


def _columns(table: Mapping, mask=None) -> dict[str, np.ndarray]:
    cols = {k: np.asarray(v, dtype=object) for k, v in table.items()}
    return cols if mask is None else {k: v[mask] for k, v in cols.items()}


def choose_configuration(
    table: Mapping,
    embeddings: Mapping[str, np.ndarray],
    *,
    baseline: str = BASELINE,
    objective="robust",
    grid: dict | None = None,
    screen: int = 2,
    label_column: str = "label",
    group_column: str | None = "group_id",
    index_split: str = "train",
    query_split: str = "val",
    k: int = SELECTION_K,
    log=None,
) -> Choice:
    """Choose an encoder (a key of ``embeddings``, rows aligned with ``table``) and a
    recipe on ``table``'s rows alone: ``index_split`` rows are the index,
    ``query_split`` rows the scored queries."""
    obj = get_objective(objective) if isinstance(objective, str) else objective
    grid = lodo_grid() if grid is None else grid
    cols = _columns(table)
    if baseline not in embeddings:
        raise RadsearchError(f"LODO: no vectors for the baseline encoder {baseline!r}")
    split = cols["split"].astype(str)
    idx, q = split == index_split, split == query_split
    if not idx.any() or not q.any():
        raise RadsearchError(f"LODO: need {index_split} and {query_split} rows to choose on")
    labels = cols[label_column].astype(str)
    groups = cols[group_column][q] if group_column and group_column in cols else None
    trials = {
        name: RecipeTrials(v[idx], labels[idx], v[q], labels[q], groups, k=k)
        for name, v in embeddings.items()
    }
    progress, log = log, []
    base = trials[baseline]({})
    screened = []
    for name, t in trials.items():
        best = max(t({}).metrics().sum(), t(SCREEN_STEPS).metrics().sum())
        screened.append((float(best), name))
        log.append(f"screen {name}: best summed P@1 micro+macro+P@10 micro {best:.4f}")
        if progress:
            progress("  " + log[-1])
    finalists = [n for _, n in sorted(screened, reverse=True)[:screen]]
    pick = Choice(baseline, {}, base.summary(), base.summary(), None, log)
    best_rank = None
    for name in finalists:
        steps, scores, accepted, _ = greedy_search(trials[name], grid, obj)
        d = obj.decide(base, scores)
        kept = ", ".join(f"{a.step}" for a in accepted) or "no step"
        log.append(f"final {name} + {Recipe(steps).describe()} ({kept}): {d.reason or 'accepted'}")
        if progress:
            progress("  " + log[-1])
        if d.accept and (best_rank is None or d.rank > best_rank):
            best_rank = d.rank
            pick = Choice(name, steps, scores.summary(), base.summary(), d.confidence, log)
    return pick


def score_configuration(
    table: Mapping,
    embeddings: Mapping[str, np.ndarray],
    encoder: str,
    steps: dict,
    queries: np.ndarray,
    *,
    label_column: str = "label",
    index_split: str = "train",
) -> dict:
    """Figures of ``encoder`` + ``steps`` (fitted on the whole ``index_split``) for the
    ``queries`` mask, as the product computes them (``knn_rows``, the protocol)."""
    from radsearch.evaluate.analyses import neighbours
    from radsearch.evaluate.protocol import DEFAULT_MAX_K

    cols = _columns(table)
    idx = cols["split"].astype(str) == index_split
    labels = cols[label_column].astype(str)
    x = np.asarray(embeddings[encoder], np.float32)
    index = scratch(x[idx])
    index.set_recipe(Recipe(steps) if steps else None)
    _, rows = neighbours(index, x[queries], DEFAULT_MAX_K)
    return query_scores(rows, labels[queries], labels[idx]).summary()


@dataclass
class Fold:
    held_out: str
    choice: Choice
    plain: dict
    chosen: dict


def leave_one_out(
    table: Mapping,
    embeddings: Mapping[str, np.ndarray],
    column: str = "dataset",
    *,
    test_split: str = "test",
    log=None,
    **choose,
) -> list[Fold]:
    """One :class:`Fold` per value of ``column``: chosen without its rows, scored on
    its ``test_split`` rows against the full index."""
    cols = _columns(table)
    if column not in cols:
        raise RadsearchError(f"LODO: no {column!r} column")
    values = cols[column].astype(str)
    baseline = choose.get("baseline", BASELINE)
    folds = []
    for held in sorted(set(values.tolist())):
        keep = values != held
        choice = choose_configuration(
            _columns(table, keep),
            {k: np.asarray(v)[keep] for k, v in embeddings.items()},
            log=log,
            **choose,
        )
        test = (values == held) & (cols["split"].astype(str) == test_split)
        if not test.any():
            raise RadsearchError(f"LODO: {column}={held} has no {test_split} rows to score")
        lab = choose.get("label_column", "label")
        plain = score_configuration(table, embeddings, baseline, {}, test, label_column=lab)
        chosen = score_configuration(
            table, embeddings, choice.encoder, choice.steps, test, label_column=lab
        )
        folds.append(Fold(held, choice, plain, chosen))
        if log:
            log(f"{held}: chose {choice.describe()}")
    return folds


def recommend(folds: list[Fold]) -> Choice:
    """The configuration chosen by the most folds (ties: the higher mean summed
    figure on the folds' own selection queries; test figures are not used)."""
    counts = Counter(f.choice.key() for f in folds)

    def merit(key):
        sel = [sum(f.choice.selection[m] for m in METRICS) for f in folds if f.choice.key() == key]
        return (counts[key], float(np.mean(sel)))

    best = max(counts, key=merit)
    return next(f.choice for f in folds if f.choice.key() == best)


def format_table(folds: list[Fold], baseline: str = BASELINE) -> str:
    """Per held-out value: plain baseline vs the chosen configuration (test figures)."""
    head = (
        f"{'held out':<22} {'queries':>7}  {'P@1 micro':>17}  {'P@1 macro':>17}  "
        f"{'P@10 micro':>17}  chosen (on the other values only)"
    )
    lines = [head, f"{'':<22} {'':>7}  " + "  ".join([f"{'plain  chosen':>17}"] * 3)]
    for f in folds:
        cells = [
            f"{f.plain[m]:.3f} {f.chosen[m]:.3f} {f.chosen[m] - f.plain[m]:+.3f}" for m in METRICS
        ]
        lines.append(
            f"{f.held_out:<22} {f.plain['queries']:>7}  "
            + "  ".join(cells)
            + "  "
            + f.choice.describe()
        )
    mean = [np.mean([f.chosen[m] - f.plain[m] for f in folds]) for m in METRICS]
    lines.append(
        f"{'mean lift':<22} {'':>7}  "
        + "  ".join(f"{'':>11}{d:+.3f}" for d in mean)
        + f"  (plain = {baseline})"
    )
    return "\n".join(lines)


def lodo_recipe(
    index_vectors,
    index_labels,
    index_values,
    val_vectors,
    val_labels,
    val_values,
    groups=None,
    *,
    grid="default",
    objective="robust",
    encoder: str = "",
):
    """``tune --lodo-column``: one encoder, the recipe chosen leaving each value out.

    For each value the recipe is tuned on the other values' rows only (index and val),
    then that value's val queries are scored against the full index, plain and with
    the fold's recipe. Returns ``(choice, folds, whole)``: the recipe most folds chose,
    the folds, and plain vs chosen figures on every val query."""
    from radsearch.tune import tune_recipe

    xi, xv = np.asarray(index_vectors, np.float32), np.asarray(val_vectors, np.float32)
    li, lv = np.asarray(index_labels, dtype=object), np.asarray(val_labels, dtype=object)
    vi, vv = np.asarray(index_values).astype(str), np.asarray(val_values).astype(str)
    g = None if groups is None else np.asarray(groups, dtype=object)
    full = RecipeTrials(xi, li)
    folds = []
    for held in sorted(set(vv.tolist())):
        ki, kv = vi != held, vv != held
        if not ki.any() or not kv.any():
            raise RadsearchError(f"LODO: nothing left to tune on without {held!r}")
        recipe, best, _ = tune_recipe(
            xi[ki],
            li[ki],
            xv[kv],
            lv[kv],
            grid,
            objective=objective,
            groups=None if g is None else g[kv],
        )
        steps = recipe.settings()["steps"] if recipe else {}
        scored = full.queries(xv[vv == held], lv[vv == held])
        choice = Choice(encoder, steps, best)
        folds.append(Fold(held, choice, scored({}).summary(), scored(steps).summary()))
    choice = recommend(folds)
    everyone = full.queries(xv, lv, g)
    return (
        choice,
        folds,
        {"plain": everyone({}).summary(), "chosen": everyone(choice.steps).summary()},
    )
