"""The mathematics of the estimators, each formula once (docs/theory.md §2–§8, §11, §12)."""
