"""What every benchmark does last: write its JSON report and its plot side by side under results/."""
from __future__ import annotations

import json
import os
from typing import Callable


def write_report(out_dir: str, name: str, report: dict, plot: Callable[[str], None]) -> None:
    """Write ``out_dir/name.json`` (floats for any numpy scalars) and ``plot(out_dir/name.png)``."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, name)
    with open(stem + ".json", "w") as fh:
        json.dump(report, fh, indent=1, default=float)
    plot(stem + ".png")
    print(f"wrote {stem}.json and {stem}.png")


def cached_json(path, compute: Callable[[], dict]) -> dict:
    """``compute()``, kept in the JSON file ``path`` so a rerun reads it instead (None: no cache).
    Written atomically (temporary file, then rename), so an interrupted run leaves no half file."""
    if path is not None and os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    value = compute()
    if path is not None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(value, fh, default=float)
        os.replace(tmp, path)
    return value
