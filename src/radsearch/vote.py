"""The one majority vote: a suggestion from ranked neighbours' labels.

``search`` (and so ``serve``) suggests a label from its hits, ``evaluate`` scores kNN
classification from its neighbour table; both call :func:`vote`, so the suggestion a
user sees and the figure the benchmark reports come from the same rule: the most
frequent label wins, and a tie goes to the tied label whose first hit ranks nearest.
"""

from __future__ import annotations

import numpy as np


def vote(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Winning label code per row of ``labels`` (``QxK`` codes in rank order, ``-1`` =
    no label or padding); ``-1`` where no hit carries a label."""
    lab = np.asarray(labels, np.int64)
    if lab.ndim != 2:
        raise ValueError(f"labels must be Q x K, got shape {lab.shape}")
    q, k = lab.shape
    votes = np.zeros((q, n_labels + 1), np.int64)  # last column: "no label", never wins
    first = np.full((q, n_labels + 1), k, np.int64)
    rows = np.arange(q)
    for j in range(k - 1, -1, -1):  # from the farthest hit in: ``first`` ends nearest
        c = np.where(lab[:, j] >= 0, lab[:, j], n_labels)
        votes[rows, c] += 1
        first[rows, c] = j
    votes[:, n_labels] = 0
    key = votes * (k + 1) + (k - first)  # more votes first, then the nearer first hit
    key[:, n_labels] = -1
    return np.where(votes.max(axis=1) > 0, key.argmax(axis=1), -1)
