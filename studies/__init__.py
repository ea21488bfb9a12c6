"""Scripts of the studies behind RESULTS.md (run from the repository root: python -m studies.NAME)."""
