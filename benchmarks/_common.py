"""What the side-by-side benchmark scripts share: the machine record and the results file."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def cpu_model() -> str:
    """``model name`` of the first CPU in /proc/cpuinfo (else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(script: str, argv: list[str], threads: int, **versions: str) -> dict:
    """The start of a results record: command, date, machine (CPU, threads, versions, load average)."""
    import torch

    return {"command": " ".join(["python", f"benchmarks/{script}", *argv]), "date": time.strftime("%Y-%m-%d"),
            "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__, **versions,
                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                        "load_average_start": [round(x, 2) for x in os.getloadavg()]}}


def save(res: dict, path: Path | None) -> None:
    """Write ``res`` to ``path`` (if any); called after each case, so partial results survive a failure."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2))


def finish(res: dict) -> None:
    res["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
