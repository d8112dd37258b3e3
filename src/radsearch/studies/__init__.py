"""Studies as the unit of search: study identity, aggregation and study search.

See docs/studies.md. ``search_study`` takes a query study and returns studies;
``group_by_study`` groups single-image hits; ``radsearch.evaluate.studies`` scores
study search with the whole-image protocol.
"""

from radsearch.studies.aggregate import DEFAULT_METHOD, METHODS, score_studies
from radsearch.studies.identity import STUDY_COLUMN, study_ids, study_of, with_study_column
from radsearch.studies.search import (
    StudyHit,
    StudyResult,
    group_by_study,
    search_study,
    search_study_id,
)

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "STUDY_COLUMN",
    "StudyHit",
    "StudyResult",
    "group_by_study",
    "score_studies",
    "search_study",
    "search_study_id",
    "study_ids",
    "study_of",
    "with_study_column",
]
