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
