"""Which study an item belongs to, and the index's items grouped by study.

Every item gets a ``study_id`` when it enters an index (``study_of``): a manifest's
study column (``--study-column``), else the DICOM StudyInstanceUID (the series uid is
kept beside it as ``series_uid``), else the NIfTI file its slice comes from; an item
with none of these is its own study. Indexes built before the column existed keep
working: every item is its own study there (``study_ids``).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, replace

import numpy as np

from radsearch.errors import RadsearchError

STUDY_COLUMN = "study_id"
_SLICE_SUFFIX = re.compile(r"#slice=\d+$")
_NIFTI_NAMES = (".nii", ".nii.gz")


def study_of(ref) -> str:
    """The study id of one ``ItemRef`` (see module docstring)."""
    meta = ref.metadata
    for key in (STUDY_COLUMN, "study_uid"):
        value = str(meta.get(key) or "").strip()
        if value:
            return value
    if str(ref.source).lower().endswith(_NIFTI_NAMES):
        return _SLICE_SUFFIX.sub("", ref.id)
    return ref.id


def with_study_column(refs: list, column: str | None) -> list:
    """``refs`` with ``study_id`` taken from metadata ``column`` (``--study-column``).

    Rows where the column is empty stay their own study (or their DICOM study).
    """
    if not column:
        return refs
    if refs and not any(column in r.metadata for r in refs):
        have = sorted({k for r in refs[:100] for k in r.metadata})
        raise RadsearchError(
            f"--study-column {column}: no such column (columns: {', '.join(have) or 'none'})"
        )
    out = []
    for r in refs:
        value = str(r.metadata.get(column) or "").strip()
        out.append(replace(r, metadata={**r.metadata, STUDY_COLUMN: value}) if value else r)
    return out


def study_ids(index) -> np.ndarray:
    """Per index row, its study id; rows without one (older indexes) are their own study."""
    ids = np.asarray(index.items.column("id").to_pylist(), dtype=object)
    if STUDY_COLUMN not in index.items.column_names:
        return ids
    col = np.asarray(index.items.column(STUDY_COLUMN).to_pylist(), dtype=object)
    empty = np.asarray([v in (None, "") for v in col], dtype=bool)
    col[empty] = ids[empty]
    return col


@dataclass
class StudyTable:
    """Rows grouped by study: study ``s`` owns ``order[starts[s]:ends[s]]`` (row order kept)."""

    names: list[str]
    order: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    of_row: np.ndarray

    @classmethod
    def from_ids(cls, ids) -> StudyTable:
        names, first, inverse = np.unique(
            np.asarray(ids, dtype=object).astype(str), return_index=True, return_inverse=True
        )
        # Studies numbered by first appearance, so ties keep the index's own order.
        rank = np.empty(len(names), np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(names))
        of_row = rank[inverse]
        order = np.argsort(of_row, kind="stable")
        counts = np.bincount(of_row, minlength=len(names))
        ends = np.cumsum(counts)
        ordered_names = [""] * len(names)
        for i, r in enumerate(rank):
            ordered_names[r] = str(names[i])
        return cls(ordered_names, order, ends - counts, ends, of_row)

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, s: int) -> np.ndarray:
        return self.order[self.starts[s] : self.ends[s]]

    def find(self, study_id: str) -> int:
        if not hasattr(self, "_pos"):
            self._pos = {n: i for i, n in enumerate(self.names)}
        if study_id not in self._pos:
            raise RadsearchError(f"--study-id {study_id}: no such study in the index")
        return self._pos[study_id]

    def gather(self, studies: np.ndarray, allowed: np.ndarray | None = None):
        """(rows, starts, kept studies): the items of ``studies`` laid out contiguously,
        studies in ascending number.

        ``allowed`` (bool per row) keeps only items passing a filter; studies left with
        no item are dropped.
        """
        if allowed is None and len(studies) == len(self):  # every study: already laid out
            return self.order, self.starts, np.arange(len(self))
        wanted = np.zeros(len(self), bool)
        wanted[np.asarray(studies, np.int64)] = True
        rows = self.order[wanted[self.of_row[self.order]]]
        if allowed is not None:
            rows = rows[allowed[rows]]
        kept, starts = np.unique(self.of_row[rows], return_index=True)
        return rows, starts.astype(np.int64), kept.astype(np.int64)


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def study_table(index) -> StudyTable:
    """The index's ``StudyTable``, built once per index state."""
    key = (index.count, id(index.items))
    cached = _TABLES.get(index)
    if cached is not None and cached[0] == key:
        return cached[1]
    table = StudyTable.from_ids(study_ids(index))
    _TABLES[index] = (key, table)
    return table
