"""Argument lists shared by the evaluate and tune tests."""

# evaluate without the analyses beyond P@k (index size, quality, 2-D map, probe)
NO_ANALYSES = [
    "--index-fractions",
    "none",
    "--quality-sample",
    "0",
    "--map",
    "none",
    "--no-probe",
]
# ... and without the report or progress bars: P@k and the tables only
ONLY_PK = [*NO_ANALYSES, "--no-report", "--no-progress"]
