"""The end of every study script: print its table and write it as CSV where ``--out`` says."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def show_and_save(rows: list[dict], out: Path | None, digits: int = 3) -> pd.DataFrame:
    """One row per measurement -> a table printed rounded to ``digits`` and, with ``out``, written
    unrounded to that CSV (its folder made)."""
    df = pd.DataFrame(rows)
    print(df.round(digits).to_string(index=False))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
    return df
