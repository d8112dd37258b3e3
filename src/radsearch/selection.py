"""Choosing recipes and configurations: trial scoring, tune objectives, greedy search.

When is a recipe step (or a configuration) better than the current one?

A greedy search that keeps any step lifting P@1 macro on a few hundred validation
queries over-fits them: on an archive nobody tuned on such steps raised macro and
lowered micro. The ``robust`` objective (the default) therefore accepts a candidate
only when a paired bootstrap over the tuning queries (resampling whole groups, e.g.
patients, when they are known, so near-duplicates move together) says

* its summed gain over P@1 micro + P@1 macro + P@10 micro is positive with at least
  ``confidence`` (default 0.9), and
* none of the three is lower than the current one by more than its noise: the
  observed drop may not exceed ``noise`` (default 1) bootstrap standard errors of
  that metric's paired difference.

``p1-macro`` is the older objective (P@1 macro, ties broken by P@10 micro), kept by
name. :class:`RecipeTrials` scores recipes on fixed index rows, and
:func:`greedy_search` walks the recipe grid with an objective. Every score comes from the evaluation protocol's modified precision
(:func:`radsearch.evaluate.protocol.modified_precision`), so tuning and ``evaluate``
never disagree on what a figure means.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from radsearch.errors import RadsearchError
from radsearch.recipe import Recipe

METRICS = ("p@1_micro", "p@1_macro", "p@10_micro")


SUMMARY_KS = (1, 3, 5, 10)


@dataclass
class QueryScores:
    """Per-query modified P@1..K of one trial (``per_query``, Q x K) over the scored
    queries, with what the bootstrap and the macro average need."""

    per_query: np.ndarray
    codes: np.ndarray  # label code of each scored query
    groups: np.ndarray  # resampling unit of each scored query (0..G-1)
    n_labels: int

    @property
    def p1(self) -> np.ndarray:
        return self.per_query[:, 0]

    @property
    def p10(self) -> np.ndarray:
        """P@10 (P@K on an index of fewer than ten rows)."""
        return self.per_query[:, min(10, self.per_query.shape[1]) - 1]

    def _averages(self, values: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Micro and macro mean of one per-query column under draw counts ``w`` (B x Q)."""
        onehot = np.zeros((len(self.codes), self.n_labels))
        onehot[np.arange(len(self.codes)), self.codes] = 1.0
        per_n, per_s = w @ onehot, (w * values) @ onehot
        present = per_n > 0
        means = np.where(present, per_s / np.where(present, per_n, 1.0), 0.0)
        return w @ values / w.sum(1), means.sum(1) / np.maximum(present.sum(1), 1)

    def metrics(self, weights: np.ndarray | None = None) -> np.ndarray:
        """``[P@1 micro, P@1 macro, P@10 micro]``; with ``weights`` (B x Q, how often
        each query was drawn) one row per resample."""
        w = np.ones((1, len(self.codes))) if weights is None else np.asarray(weights, np.float64)
        micro1, macro1 = self._averages(self.p1, w)
        micro10 = w @ self.p10 / w.sum(1)
        out = np.stack([micro1, macro1, micro10], axis=1)
        return out[0] if weights is None else out

    def summary(self) -> dict:
        """``queries`` and P@k micro/macro at k = 1, 3, 5, 10 (those the table has)."""
        out: dict = {"queries": len(self.codes)}
        w = np.ones((1, len(self.codes)))
        for k in SUMMARY_KS:
            if k <= self.per_query.shape[1]:
                mi, ma = self._averages(self.per_query[:, k - 1], w)
                out[f"p@{k}_micro"], out[f"p@{k}_macro"] = float(mi[0]), float(ma[0])
        return out


def query_scores(rows: np.ndarray, query_labels, index_labels, groups=None) -> QueryScores:
    """Score a neighbour table (rows of the index, best first) with the protocol's
    modified precision; ``groups`` (one value per query) are the bootstrap's units."""
    from radsearch.evaluate.protocol import encode_labels, modified_precision

    (q_codes, i_codes), vocab = encode_labels(query_labels, index_labels)
    res = modified_precision(np.asarray(rows), q_codes, i_codes, len(vocab), max_k=10)
    g = np.arange(len(q_codes)) if groups is None else np.asarray(groups, dtype=object)
    _, g_codes = np.unique(np.asarray(g)[res.scored].astype(str), return_inverse=True)
    return QueryScores(res.per_query, q_codes[res.scored], g_codes, len(vocab))


def bootstrap_weights(groups: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """``n x Q`` draw counts of a bootstrap that resamples whole groups."""
    rng = np.random.default_rng(seed)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    draws = rng.integers(0, n_groups, size=(n, n_groups))
    counts = np.zeros((n, n_groups))
    np.add.at(counts, (np.arange(n)[:, None], draws), 1.0)
    return counts[:, groups]


def scratch(vectors: np.ndarray):
    """A throw-away in-memory index over ``vectors`` (searched through ``knn_rows``)."""
    from radsearch.evaluate.analyses import scratch_index

    return scratch_index(vectors)


FIT_STEPS = ("whiten", "cluster")


class RecipeTrials:
    """Scores recipes of one encoder on fixed index rows, through ``knn_rows``.

    A recipe ``F + S`` (F its fitted steps, whiten/cluster; S the rest) on raw vectors
    ranks exactly as ``S`` on F's output, since F ends in an L2-normalisation and S
    fits nothing (a unit test checks the identity). So each F is fitted once per
    index, however many S and query sets are tried on top; all-zero padding columns
    of F's output are dropped (they add nothing to any inner product)."""

    def __init__(
        self,
        index_vectors,
        index_labels,
        query_vectors=None,
        query_labels=None,
        groups=None,
        views: dict | None = None,
        k: int | None = None,
    ):
        from radsearch.evaluate.protocol import DEFAULT_MAX_K

        # evaluate's neighbour count: query expansion re-scores max(4k, 50) candidates,
        # so the first ten hits depend on it
        self.k = k or DEFAULT_MAX_K
        self.xi = np.asarray(index_vectors, np.float32)
        self.li = list(index_labels)
        self.xq = None if query_vectors is None else np.asarray(query_vectors, np.float32)
        self.lq, self.groups = query_labels, groups
        self._views = {} if views is None else views

    def queries(self, vectors, labels, groups=None) -> RecipeTrials:
        """The same index (and fitted steps) scored on other queries."""
        return RecipeTrials(self.xi, self.li, vectors, labels, groups, self._views, self.k)

    def _view(self, fit: dict):
        key = json.dumps(fit, sort_keys=True)
        if key not in self._views:
            if not fit:
                self._views[key] = (scratch(self.xi), None, None)
            else:
                r = Recipe(fit).fit(self.xi)
                db = r.transform_db(self.xi)
                keep = np.flatnonzero(np.any(db != 0, axis=0))
                self._views[key] = (scratch(db[:, keep]), r, keep)
        return self._views[key]

    def neighbours(self, steps: dict) -> np.ndarray:
        from radsearch.evaluate.analyses import neighbours

        index, fitted, keep = self._view({s: o for s, o in steps.items() if s in FIT_STEPS})
        q = self.xq if fitted is None else fitted.transform_query(self.xq)[:, keep]
        rest = {s: o for s, o in steps.items() if s not in FIT_STEPS and s != "flip"}
        index.set_recipe(Recipe(rest) if rest else None)
        return neighbours(index, q, self.k)[1]

    def __call__(self, steps: dict) -> QueryScores:
        return query_scores(self.neighbours(steps), self.lq, self.li, self.groups)


@dataclass
class Decision:
    """The objective's verdict on one candidate against the current choice."""

    accept: bool
    rank: tuple  # larger is better among accepted candidates
    deltas: dict[str, float] = field(default_factory=dict)
    confidence: float | None = None  # bootstrap P(summed gain > 0)
    noise: dict[str, float] = field(default_factory=dict)  # bootstrap SE of each delta
    reason: str = ""


class RobustObjective:
    """Accept only gains that hold on resampled queries and cost no metric its noise."""

    name = "robust"

    def __init__(self, confidence: float = 0.9, noise: float = 1.0, resamples: int = 1000):
        self.confidence, self.noise, self.resamples = confidence, noise, resamples
        self._weights: dict = {}

    def _boot(self, s: QueryScores) -> np.ndarray:
        key = (len(s.groups), s.groups.tobytes())
        if key not in self._weights:
            self._weights = {key: bootstrap_weights(s.groups, self.resamples)}
        return self._weights[key]

    def decide(self, current: QueryScores, candidate: QueryScores) -> Decision:
        if len(current.codes) != len(candidate.codes):
            raise RadsearchError("objective: the two trials scored different queries")
        w = self._boot(current)
        delta = candidate.metrics() - current.metrics()
        boot = candidate.metrics(w) - current.metrics(w)
        se = boot.std(axis=0, ddof=1) if len(boot) > 1 else np.zeros(3)
        gain = float(delta.sum())
        conf = float(np.mean(boot.sum(1) > 0))
        deltas = {m: float(d) for m, d in zip(METRICS, delta, strict=True)}
        noise = {m: float(s) for m, s in zip(METRICS, se, strict=True)}
        hurt = [
            m for m, d, s in zip(METRICS, delta, se, strict=True) if d < -self.noise * s - 1e-12
        ]
        if hurt:
            reason = "lowers " + ", ".join(hurt) + " beyond noise"
        elif gain <= 0 or conf < self.confidence:
            reason = f"gain {gain:+.4f} at confidence {conf:.2f} < {self.confidence}"
        else:
            reason = ""
        return Decision(not reason, (round(gain, 9),), deltas, conf, noise, reason)


class MacroObjective:
    """The older objective: P@1 macro, ties broken by P@10 micro."""

    name = "p1-macro"

    def decide(self, current: QueryScores, candidate: QueryScores) -> Decision:
        cur, cand = current.metrics(), candidate.metrics()
        key = (round(float(cand[1]), 6), round(float(cand[2]), 6))
        accept = key > (round(float(cur[1]), 6), round(float(cur[2]), 6))
        deltas = {m: float(d) for m, d in zip(METRICS, cand - cur, strict=True)}
        return Decision(accept, key, deltas, None, {}, "" if accept else "no higher P@1 macro")


OBJECTIVES: dict[str, Callable[[], object]] = {
    "robust": RobustObjective,
    "p1-macro": MacroObjective,
}
DEFAULT_OBJECTIVE = "robust"


def get_objective(name: str):
    if name not in OBJECTIVES:
        raise RadsearchError(f"unknown tune objective {name!r} (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name]()


@dataclass
class Step:
    """One accepted step of a greedy search (what ``tune`` reports)."""

    step: str
    options: dict
    decision: Decision


def greedy_search(score: Callable[[dict], QueryScores], grid: dict, objective, log=None):
    """Greedy over ``grid`` (step -> options, ``None`` = off) in its order: each step
    adds the best option the objective accepts against the steps kept so far.

    ``score(steps)`` scores a recipe's steps on the tuning queries. Returns
    ``(steps, scores, accepted, trials)``; ``trials`` lists every scored recipe with
    the objective's verdict (``accepted``, ``confidence``) and whether it was ``kept``."""
    steps: dict = {}
    best = score({})
    trials = [{"steps": {}, **best.summary(), "kept": True}]
    accepted: list[Step] = []
    if log:
        p = best.metrics()
        log(f"  {'none':<60} P@1 {p[0]:.4f}/{p[1]:.4f}  P@10 {p[2]:.4f}")
    for name, options in grid.items():
        pick = None
        for opt in options:
            if opt is None:
                continue
            cand_steps = json.loads(json.dumps({**steps, name: opt}))
            cand = score(cand_steps)
            d = objective.decide(best, cand)
            trial = {"steps": cand_steps, **cand.summary(), "accepted": d.accept}
            trial.update(confidence=d.confidence, kept=False)
            trials.append(trial)
            if log:
                log(_trial_line(cand_steps, cand, d))
            if d.accept and (pick is None or d.rank > pick[2].rank):
                pick = (cand_steps, cand, d, trial)
        if pick is not None:
            steps, best = pick[0], pick[1]
            pick[3]["kept"] = True
            accepted.append(Step(name, dict(pick[0][name]), pick[2]))
    return steps, best, accepted, trials


def _trial_line(steps: dict, s: QueryScores, d: Decision) -> str:
    p = s.metrics()
    conf = "" if d.confidence is None else f"  conf {d.confidence:.2f}"
    verdict = "kept" if d.accept else f"no: {d.reason}"
    return (
        f"  {Recipe(steps).describe():<60} P@1 {p[0]:.4f}/{p[1]:.4f}"
        f"  P@10 {p[2]:.4f}{conf}  {verdict}"
    )
