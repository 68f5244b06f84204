"""The full check of the bbob-noisy suite against cocoex: every dimension 2..40, all 30 functions, instances 1-15.

The default tests (``tests/test_bbob_noisy.py``) run the same comparison on dimensions 2, 10 and 40; this
sweep covers every dimension and writes ``benchmarks/results/bbob_suites_sweep.json`` (one entry per
dimension, written as it goes: the worst error relative to the tolerance, problems and points compared).

Usage::

    python benchmarks/bbob_suites_sweep.py            # dimensions 2..40
    python benchmarks/bbob_suites_sweep.py 2 3 5      # some dimensions
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_bbob_noisy import compare_with_cocoex  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "bbob_suites_sweep.json"


def main(dimensions: list[int]) -> None:
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    noisy = results.setdefault("bbob-noisy", {})
    for d in dimensions:
        t0 = time.perf_counter()
        entry = compare_with_cocoex(d)  # raises AssertionError on any mismatch
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        noisy[str(d)] = entry
        OUT.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(f"bbob-noisy {d:2d}-D: {entry}", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or list(range(2, 41)))
