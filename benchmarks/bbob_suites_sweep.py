"""The full checks of the extra COCO suites against cocoex: every function, instances 1-15, every dimension.

* ``bbob-noisy``: dimensions 2..40, all 30 functions, noise included (``tests/test_bbob_noisy.py`` runs 2, 10, 40);
* ``bbob-largescale``: 20, 40, 80, 160, 320, 640 (the tests run 20 and 40, and 640 on instances 1 and 7);
* ``bbob-mixint``: 5, 10, 20, 40, 80, 160 (the tests run 5 and 20, and 80 on instances 1 and 7).

It writes ``benchmarks/results/bbob_suites_sweep.json`` as it goes (one entry per suite and dimension: the
worst error relative to the 1e-9 tolerance, problems and points compared, seconds) and prints the worst
error of each suite. Any value off by more than the tolerance stops it with an AssertionError.

Usage::

    python benchmarks/bbob_suites_sweep.py                          # every suite, every dimension
    python benchmarks/bbob_suites_sweep.py bbob-largescale          # one suite
    python benchmarks/bbob_suites_sweep.py bbob-mixint 5 10         # some dimensions of one suite
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_bbob_largescale  # noqa: E402
import test_bbob_noisy  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "bbob_suites_sweep.json"

DIMENSIONS = {
    "bbob-noisy": list(range(2, 41)),
    "bbob-largescale": [20, 40, 80, 160, 320, 640],
    "bbob-mixint": [5, 10, 20, 40, 80, 160],
}


def _compare(suite: str, d: int) -> dict:
    if suite == "bbob-noisy":
        return test_bbob_noisy.compare_with_cocoex(d)
    return test_bbob_largescale.compare_with_cocoex(suite, d)


def main(suites: list[str], dimensions: list[int] | None) -> None:
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    for suite in suites:
        entries = results.setdefault(suite, {})
        for d in dimensions or DIMENSIONS[suite]:
            t0 = time.perf_counter()
            entry = _compare(suite, d)  # raises AssertionError on any mismatch
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            entries[str(d)] = entry
            OUT.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            print(f"{suite} {d:3d}-D: {entry}", flush=True)
        worst = max(e["max_relative_error"] for e in entries.values())
        print(f"{suite}: worst relative error {worst:.2e} (tolerance 1e-9) over dimensions {sorted(map(int, entries))}")


if __name__ == "__main__":
    args = sys.argv[1:]
    chosen = [a for a in args if a in DIMENSIONS] or list(DIMENSIONS)
    dims = [int(a) for a in args if a not in DIMENSIONS] or None
    main(chosen, dims)
