"""The tune objectives and the trial scorer behind ``radsearch tune`` and LODO."""

import numpy as np

from radsearch.recipe import Recipe
from radsearch.selection import (
    MacroObjective,
    QueryScores,
    RecipeTrials,
    RobustObjective,
    greedy_search,
    query_scores,
    scratch,
)


def _scores(p1, codes, p10=None):
    p1 = np.asarray(p1, float)
    codes = np.asarray(codes)
    per_query = np.stack([p1] * 9 + [p1 if p10 is None else np.asarray(p10, float)], axis=1)
    return QueryScores(per_query, codes, np.arange(len(p1)), int(codes.max()) + 1)


def _planted():
    """300 queries: 280 of a common label, 20 of a rare one. The planted step turns 12
    rare misses into hits (P@1 macro +0.30) and 30 common hits into misses (micro -0.06)."""
    codes = np.r_[np.zeros(280, int), np.ones(20, int)]
    rng = np.random.default_rng(0)
    base = np.r_[(rng.random(280) < 0.8).astype(float), np.zeros(20)]
    step = base.copy()
    step[280:292] = 1.0
    step[np.flatnonzero(base[:280] == 1)[:30]] = 0.0
    return _scores(base, codes), _scores(step, codes)


def test_robust_objective_rejects_a_step_that_lifts_macro_and_lowers_micro():
    base, planted = _planted()
    m0, m1 = base.summary(), planted.summary()
    assert m1["p@1_macro"] > m0["p@1_macro"] + 0.2 and m1["p@1_micro"] < m0["p@1_micro"] - 0.02
    # the older objective takes it; the robust one refuses and says why
    assert MacroObjective().decide(base, planted).accept
    d = RobustObjective().decide(base, planted)
    assert not d.accept and "p@1_micro" in d.reason
    # the same through the greedy search a tune run walks
    table = {"{}": base, '{"qe": {}}': planted}
    grid = {"qe": [None, {}]}
    for obj, kept in ((RobustObjective(), {}), (MacroObjective(), {"qe": {}})):
        steps, _, accepted, trials = greedy_search(
            lambda s: table[str(s).replace("'", '"')], grid, obj
        )
        assert steps == kept and len(trials) == 2


def test_robust_objective_accepts_a_clear_gain_with_its_confidence():
    codes = np.r_[np.zeros(150, int), np.ones(150, int)]
    rng = np.random.default_rng(1)
    base = (rng.random(300) < 0.6).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:40]] = 1.0  # 40 more hits, none lost
    d = RobustObjective().decide(_scores(base, codes), _scores(better, codes))
    assert d.accept and d.confidence >= 0.99
    assert d.deltas["p@1_micro"] > 0.1 and all(v >= 0 for v in d.noise.values())
    # a gain of one query is within the noise: not accepted
    tiny = base.copy()
    tiny[np.flatnonzero(base == 0)[0]] = 1.0
    assert not RobustObjective().decide(_scores(base, codes), _scores(tiny, codes)).accept


def test_grouped_bootstrap_moves_near_duplicates_together():
    """With every query of a group identical, resampling groups is as noisy as a set of
    that many queries: the same gain earns less confidence than with free queries."""
    codes = np.zeros(200, int)
    base = np.zeros(200)
    cand = base.copy()
    cand[:6] = 1.0  # one group of 6 near-duplicates gains
    free = RobustObjective().decide(_scores(base, codes), _scores(cand, codes))
    g = np.arange(200) // 6
    grouped = RobustObjective().decide(
        QueryScores(base[:, None], codes, g, 1), QueryScores(cand[:, None], codes, g, 1)
    )
    assert free.accept and not grouped.accept and grouped.confidence < free.confidence


def test_query_scores_use_the_protocol_modified_precision():
    # index labels a,a,b ; query of label b: P@10 is capped at 1 (one b in the index)
    rows = np.array([[2, 0, 1], [0, 2, 1]])
    s = query_scores(rows, ["b", "a"], ["a", "a", "b"])
    assert s.summary() == {
        "queries": 2,
        "p@1_micro": 1.0,
        "p@1_macro": 1.0,
        "p@3_micro": 0.75,
        "p@3_macro": 0.75,
    }
    assert s.metrics().tolist() == [1.0, 1.0, 0.75]


def test_recipe_trials_rank_as_the_full_recipe_does():
    """Fitted steps cached per index give the neighbours of the whole recipe."""
    from radsearch.search import knn_rows

    rng = np.random.default_rng(0)
    xi = rng.normal(size=(300, 24)).astype(np.float32)
    xq = rng.normal(size=(40, 24)).astype(np.float32)
    xi /= np.linalg.norm(xi, axis=1, keepdims=True)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    trials = RecipeTrials(xi, ["a"] * 300, xq, ["a"] * 40, k=10)
    for steps in (
        {},
        {"whiten": {"dim": 8}},
        {"whiten": {"power": 0.5}, "dba": {"k": 3}, "qe": {"k": 2}},
        {"whiten": {"dim": 12}, "cluster": {"n": 3, "dim": 4}, "qe": {"k": 3}},
        {"whiten": {}, "rerank": {"k1": 6, "k2": 3, "candidates": 30}},
    ):
        index = scratch(xi)
        index.set_recipe(Recipe(steps) if steps else None)
        want = knn_rows(index, xq, 10)[1]
        got = trials.neighbours(steps)
        agree = np.mean(want == got)
        assert agree > 0.99, (steps, agree)  # float rounding may swap near-ties
        assert (want[:, 0] == got[:, 0]).mean() > 0.99
