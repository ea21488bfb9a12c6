"""Are two demo outputs the same, value for value?  ``python -m studies.same_tables A/tables B/tables``
compares every CSV table (ignoring only what records where and when: checkpoint paths, code version,
timings) and the results summary byte for byte; exit status 0 when all are equal.  Used to show that a
refactor left the demo's numbers unchanged (issue 24)."""

from __future__ import annotations

import argparse
import filecmp
import sys
from pathlib import Path

import pandas as pd

PROVENANCE = ("checkpoint", "code_version", "run_dir", "path", "images_per_s")


def compare(a: Path, b: Path) -> list[str]:
    """One line per table: ``equal`` or what differs."""
    lines = []
    for f in sorted(a.iterdir()):
        if f.suffix == ".csv":
            x, y = pd.read_csv(f), pd.read_csv(b / f.name)
            drop = [c for c in x.columns if c in PROVENANCE or "time" in c or "second" in c]
            x, y = x.drop(columns=drop), y.drop(columns=drop, errors="ignore")
            if x.shape == y.shape and x.equals(y):
                lines.append(f"{f.name}: equal ({x.shape[0]} rows x {x.shape[1]} columns; not compared: {', '.join(drop) or '-'})")
            else:
                cols = [c for c in x.columns if c not in y or not x[c].equals(y[c])]
                lines.append(f"{f.name}: DIFFERENT (shapes {x.shape} vs {y.shape}; columns {', '.join(cols[:8])})")
        elif f.suffix == ".md":
            lines.append(f"{f.name}: {'equal' if filecmp.cmp(f, b / f.name, shallow=False) else 'DIFFERENT'} (bytes)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    lines = compare(args.a, args.b)
    print("\n".join(lines))
    return 0 if lines and all("DIFFERENT" not in ln for ln in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
