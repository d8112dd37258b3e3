"""The one majority vote: a suggestion from ranked neighbours' labels.

``search`` (and so ``serve``) suggests a label from its hits, ``evaluate`` scores kNN
classification from its neighbour table; both call :func:`vote`, so the suggestion a
user sees and the figure the benchmark reports come from the same rule: the most
frequent label wins; a tie goes to the label with the larger summed score, then to
the one whose first hit ranks nearest. Without scores every hit weighs the same, so
ties go to the nearest.
"""

from __future__ import annotations

import numpy as np


def vote(labels: np.ndarray, n_labels: int, scores: np.ndarray | None = None) -> np.ndarray:
    """Winning label code per row of ``labels`` (``QxK`` codes in rank order, ``-1`` =
    no label or padding); ``-1`` where no hit carries a label. ``scores``: ``QxK``."""
    lab = np.asarray(labels, np.int64)
    if lab.ndim != 2:
        raise ValueError(f"labels must be Q x K, got shape {lab.shape}")
    q, k = lab.shape
    w = np.ones(lab.shape) if scores is None else np.asarray(scores, np.float64)
    votes = np.zeros((q, n_labels + 1), np.int64)  # last column: "no label", never wins
    weight = np.zeros((q, n_labels + 1), np.float64)
    first = np.full((q, n_labels + 1), k, np.int64)
    rows = np.arange(q)
    for j in range(k):  # rank order: the summed scores add up as a loop over hits would
        c = np.where(lab[:, j] >= 0, lab[:, j], n_labels)
        votes[rows, c] += 1
        weight[rows, c] += w[:, j]
        first[rows, c] = np.minimum(first[rows, c], j)
    votes[:, n_labels] = 0
    best = votes.max(axis=1, keepdims=True)
    tied = votes == best
    tw = np.where(tied, weight, -np.inf)
    tied &= tw == tw.max(axis=1, keepdims=True)
    pred = np.where(tied, first, k + 1).argmin(axis=1)
    return np.where(best[:, 0] > 0, pred, -1)
