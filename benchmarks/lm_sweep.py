"""Sweep: which settings of the integer EGG LM buy the most validation bits/byte per unit of compute?

Every setting trains for the same number of training tokens (population x chunk x
generations), so settings compare at equal work whatever the load of this shared
CPU; the threshold schedule spans each run's generations. Recorded per run: the
validation bits/byte at the end, generations, wall seconds, seconds per
generation, and ``os.getloadavg()`` before and after (other jobs share the cores).

A second part times one generation of the paper's model shape (6 blocks x 256)
to say how the paper's setting would run here.

Run::

    python benchmarks/lm_sweep.py                       # the sweep in SETTINGS (~1 h on a busy CPU)
    python benchmarks/lm_sweep.py --only 0 1 --tokens 5e6
    python benchmarks/lm_sweep.py --paper-shape-only    # one timed generation of 6 x 256

Writes ``benchmarks/results/lm_sweep.{json,md}`` (merging with runs already there). Each run,
the paper-shape timing and the side-by-side runs keep the command that made them, and the
markdown states only what the runs present show.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# population, chunk, width, depth, mlp_ratio, sigma_shift, alpha_end
SETTINGS = [
    dict(population=2048, chunk=64),  # the previous lm_train.md setting
    dict(population=2048, chunk=16),
    dict(population=1024, chunk=16),
    dict(population=4096, chunk=16),
    dict(population=2048, chunk=32),
    dict(population=2048, chunk=16, mlp_ratio=2),
    dict(population=2048, chunk=8),
]
BASE = dict(width=64, depth=2, mlp_ratio=4, sigma_shift=3, alpha_start=1.0, alpha_end=0.25, rank=1)


def run_one(setting: dict, tokens: float, train, valid) -> dict:
    import jax

    from eggroll.problems import text

    cfg = {**BASE, **setting}
    generations = max(1, round(tokens / (cfg["population"] * cfg["chunk"])))
    config = text.LMConfig(**cfg, generations=generations)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    task = text.make_task(config, train, valid)
    carry, history = text.train_lm(task, valid_every=max(1, generations // 8))
    jax.block_until_ready(carry)
    wall = time.perf_counter() - t0
    steps = [r for r in history if "tokens_per_s" in r]
    step_s = sorted(cfg["population"] * cfg["chunk"] / r["tokens_per_s"] for r in steps)
    valid_curve = [(r["generation"], round(r["valid_bpb"], 4)) for r in history if "valid_bpb" in r]
    return {
        "setting": cfg,
        "generations": int(carry.generation),
        "tokens": int(carry.generation) * cfg["population"] * cfg["chunk"],
        "valid_final": valid_curve[-1][1],
        "valid_curve": valid_curve,
        "wall_s": round(wall, 1),
        "median_step_s": round(step_s[len(step_s) // 2], 4),
        "min_step_s": round(step_s[0], 4),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def paper_shape(population: int = 128, chunk: int = 32) -> dict:
    """Time generations of 6 blocks x 256 on this CPU (measured, not extrapolated)."""
    import jax

    from eggroll.models import egg
    from eggroll.problems import text

    train, valid = text.split_bytes(text.load_corpus(), 0.1)
    config = text.LMConfig(width=256, depth=6, population=population, chunk=chunk, sigma_shift=3, generations=10)
    task = text.make_task(config, train, valid)
    carry = task.init()
    load = os.getloadavg()
    times = []
    for g in range(4):
        x, y, r = (task.put(a) for a in task.batch(g))
        t = time.perf_counter()
        carry, metrics = task.step(carry, x, y, r)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step = min(times[1:])  # the first call compiles
    tok_s = population * chunk / step
    return {
        "shape": "6 x 256",
        "params": egg.num_params(carry.es_state.mean),
        "population": population,
        "chunk": chunk,
        "step_s": round(step, 3),
        "tokens_per_s": round(tok_s),
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        # the paper's largest population, 2^20 members, one chunk of the same length each
        "extrapolated_step_s_at_2_20": round(2**20 * chunk / tok_s, 1),
    }


def commands(record: dict) -> str:
    """The commands behind the record, in order: each run and section keeps its own (an older record has one
    line, ``command``, for those without)."""
    found = [r.get("command") for r in record["runs"]]
    if record.get("paper_shape"):
        found.append(record["paper_shape"].get("command"))
    if record.get("ten_minutes"):
        found.append(record.get("ten_minutes_command"))
    cmds = list(dict.fromkeys(c for c in found if c))
    if None in found and record.get("command"):
        cmds.insert(0, record["command"])
    return ", then ".join(f"`{c}`" for c in cmds)


def describe(setting: dict) -> str:
    """``population 2048, chunk 8``: a setting in words."""
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in setting.items())


def budget_minutes(run: dict) -> float:
    """An lm_train.py run's budget (older entries: read from its command; lm_train.py's default is 10)."""
    found = re.search(r"--minutes[ =](\S+)", run.get("command", ""))
    return run.get("minutes") or (float(found.group(1)) if found else 10.0)


def header(record: dict) -> str:
    """The paragraph above the table: the commands, the tokens, what the runs share, and their notes."""
    runs = record["runs"]
    if not runs:
        return f"{commands(record)}."
    by_tokens = collections.defaultdict(list)
    for i, r in enumerate(runs):
        by_tokens[r["tokens"]].append(str(i))
    each = "; ".join(f"{t:,.0f} for run{'s' * (len(ids) > 1)} {', '.join(ids)}" for t, ids in by_tokens.items())
    tokens = (
        f"Every run trains on the same number of tokens (population x chunk x generations = {runs[0]['tokens']:,.0f})"
        if len(by_tokens) == 1
        else f"The runs train on different numbers of tokens (population x chunk x generations: {each}): compare "
        "bits/byte between runs of equal tokens only"
    )

    def shared(key: str) -> str:  # a setting's values over the runs
        return " / ".join(dict.fromkeys(f"{r['setting'][key]:g}" for r in runs))

    missing = [describe(s) for s in SETTINGS if {**BASE, **s} not in [r["setting"] for r in runs]]
    return (
        f"{commands(record)}. {tokens}, from the same seed; model 2 x 64 unless noted, rank {shared('rank')}, "
        f"z-test level {shared('alpha_start')} -> alpha_end over each run's generations. Other jobs may share the "
        "CPU: the load average is recorded with each run, and settings are compared by validation bits/byte at "
        "equal tokens and by seconds per generation (the median step; its minimum is the least-loaded one)."
        + "".join(f" Run {i}: {r['note']}." for i, r in enumerate(runs) if r.get("note"))
        + (f" Not in the table (no finished run recorded): {'; '.join(missing)}." if missing else "")
    )


def markdown(record: dict) -> str:
    runs = record["runs"]
    lines = ["# Integer EGG LM: settings sweep at equal training tokens", "", header(record)]
    if runs:
        lines += [
            "",
            "| # | population | chunk | width x depth | mlp ratio | sigma | alpha end | generations | valid bits/byte "
            "| median s/gen | min s/gen | wall s | load before / after |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for i, r in enumerate(runs):
        s = r["setting"]
        lines.append(
            f"| {i} | {s['population']} | {s['chunk']} | {s['width']} x {s['depth']} | {s['mlp_ratio']} | "
            f"2^-{s['sigma_shift']} | {s['alpha_end']:g} | {r['generations']} | **{r['valid_final']:.3f}** | "
            f"{r['median_step_s']:.3f} | {r['min_step_s']:.3f} | {r['wall_s']:.0f} | "
            f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |"
        )
    b = record.get("baselines")
    if b:
        lines += ["", f"Baselines on the same validation split: unigram {b['unigram_valid']:.3f}, bigram "
                  f"{b['bigram_valid']:.3f} bits/byte."]  # fmt: skip
    p = record.get("paper_shape")
    if p:
        lines += [
            "",
            "## The paper's setting here",
            "",
            f"One generation of the paper's shape ({p['shape']}, {p['params']:,} int8 parameters) with population "
            f"{p['population']} and chunk {p['chunk']} was **measured** at {p['step_s']:.2f} s "
            f"({p['tokens_per_s']:,} tokens/s; load average {p['load_before'][0]:.1f}). At the paper's largest "
            f"population (2^20) and the same chunk, one generation would take about "
            f"{p['extrapolated_step_s_at_2_20']:,.0f} s on this CPU (**extrapolated** linearly from that "
            "throughput; the 2^20 hidden states alone take 1.6 GB of int8, so the members would be evaluated "
            "in batches).",
        ]
    ten = record.get("ten_minutes")
    if ten:
        minutes = " / ".join(dict.fromkeys(f"{budget_minutes(t):g}" for t in ten))
        many = len(ten) > 1
        lines += [
            "",
            f"## {minutes} minutes side by side" if many else f"## {minutes} minutes",
            "",
            f"{len(ten)} `benchmarks/lm_train.py` runs started together (so under the same load), {minutes} minutes "
            "each, compile included:"
            if many
            else f"One `benchmarks/lm_train.py` run, {minutes} minutes, compile included:",
            "",
            "| population | chunk | mlp ratio | schedule length | generations done | valid bits/byte "
            "| load before / after |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in ten:
            c = t["config"]
            lines.append(
                f"| {c['population']} | {c['chunk']} | {c['mlp_ratio']} | {c['generations']} | "
                f"{t['generations_done']} | "
                f"**{t['valid_final']:.3f}** | {t['machine']['load_avg_before'][0]:.1f} / "
                f"{t['machine']['load_avg_after'][0]:.1f} |"
            )
    lines += ["", "## Reading", ""] + reading(record)
    if record.get("earlier_sweep"):
        lines += ["", "## Earlier sweep (chunk 64, fixed 4-minute budget, idle machine)", ""] + record["earlier_sweep"]
    return "\n".join(lines) + "\n"


def reading(record: dict) -> list[str]:
    """Statements drawn from the table (nothing typed by hand), each made only where the runs show it; among runs
    of several token counts, those of the most common one."""
    runs = record["runs"]
    if not runs:
        return []
    tokens, n = collections.Counter(r["tokens"] for r in runs).most_common(1)[0]
    out = [f"- Read among the {n} runs of {tokens:,.0f} tokens (the others trained on other amounts)."]
    out = out if n < len(runs) else []
    runs = [r for r in runs if r["tokens"] == tokens]
    best = min(runs, key=lambda r: r["valid_final"])
    base = next((r for r in runs if r["setting"]["population"] == 2048 and r["setting"]["chunk"] == 64), None)
    s = best["setting"]
    out += [
        f"- Best at equal tokens: population {s['population']}, chunk {s['chunk']}, mlp ratio {s['mlp_ratio']}: "
        f"{best['valid_final']:.3f} bits/byte after {best['generations']} generations."
    ]
    if base is not None and base is not best:
        out.append(
            f"- The earlier default (population 2048, chunk 64) reached {base['valid_final']:.3f} on the same tokens; "
            f"the best setting's generation costs {best['min_step_s'] / base['min_step_s']:.2f}x its generation "
            "(least-loaded steps), so it is also ahead per second."
        )
    cheap = min(runs, key=lambda r: r["min_step_s"] * r["generations"])
    if cheap is not best:
        c = cheap["setting"]
        out.append(
            f"- Per second: population {c['population']}, chunk {c['chunk']}, mlp ratio {c['mlp_ratio']} reached "
            f"{cheap['valid_final']:.3f} with {cheap['min_step_s'] * cheap['generations']:.0f} s of least-loaded "
            f"steps, against {best['min_step_s'] * best['generations']:.0f} s for the best at equal tokens: the "
            f"better use of a fixed time{uses(c, record)}."
        )
    chunks, populations = ({r["setting"][k] for r in runs} for k in ("chunk", "population"))
    if (
        len(chunks) > 1
        and best["setting"]["chunk"] == min(chunks)
        and best["setting"]["population"] == max(populations)
    ):
        out.append(
            "- Shorter chunks with more members win: every generation moves each weight by at most one int8 step, "
            "so many cheap generations from many members beat few generations from long chunks; the hidden state "
            "is carried across chunks, so a short chunk does not shorten the context the model learns from."
        )
    b = record.get("baselines")
    if b and best["valid_final"] > b["bigram_valid"]:
        out.append(
            f"- None of these short runs reaches the bigram baseline ({b['bigram_valid']:.3f}); they compare settings "
            f"at about {tokens / 1e6:.2g} M tokens. See `lm_train.md` for a longer run."
        )
    return out


def uses(setting: dict, record: dict) -> str:
    """Where else ``setting`` (population, chunk, mlp ratio) is used: the side-by-side runs, `eggroll lm`'s
    defaults."""
    from eggroll.commands import lm

    keys = ("population", "chunk", "mlp_ratio")
    defaults = inspect.signature(lm.train).parameters
    where = []
    ten = [t for t in record.get("ten_minutes") or [] if all(t["config"][k] == setting[k] for k in keys)]
    if ten:
        where.append(
            f"the setting of the {' / '.join(dict.fromkeys(f'{budget_minutes(t):g}' for t in ten))}-minute run"
        )
    if all(defaults[k].default.default == setting[k] for k in keys):
        where.append("of `eggroll lm`'s defaults")
    return ", and " + " and ".join(where) if where else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=float, default=2048 * 64 * 160, help="training tokens per run")
    parser.add_argument("--only", type=int, nargs="*", help="indices into SETTINGS")
    parser.add_argument("--paper-shape-only", action="store_true")
    parser.add_argument("--ten-minutes", type=Path, nargs="*", help="lm_train.json files run side by side")
    parser.add_argument("--note", help="a remark kept with each run of this invocation (e.g. what shared the CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from eggroll.problems import text

    path = args.out / "lm_sweep.json"
    record = json.loads(path.read_text()) if path.exists() else {"runs": []}
    train, valid = text.split_bytes(text.load_corpus(), 0.1)
    record["baselines"] = {
        "unigram_valid": text.unigram_bits(train, valid),
        "bigram_valid": text.bigram_bits(train, valid),
    }
    # the sweep an earlier session ran (4 minutes per setting, chunk 64, idle machine), copied once into the
    # record from the lm_train.md of commit ad7fd1a; kept as it is, so a rerun does not lose it
    record.setdefault("earlier_sweep", [])
    command = shlex.join(["python", "benchmarks/lm_sweep.py", *sys.argv[1:]])
    if args.ten_minutes:
        keep = ("config", "minutes", "generations_done", "valid_final", "wall_seconds", "machine", "command")
        record["ten_minutes"] = [
            {k: v for k, v in json.loads(f.read_text()).items() if k in keep} for f in args.ten_minutes
        ]
        record["ten_minutes_command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    if args.paper_shape_only:
        record["paper_shape"] = {**paper_shape(), "command": command}
        print(record["paper_shape"], flush=True)
    elif not args.ten_minutes:
        for i in args.only if args.only is not None else range(len(SETTINGS)):
            res = {**run_one(SETTINGS[i], args.tokens, train, valid), "command": command}
            if args.note:
                res["note"] = args.note
            print(json.dumps({k: v for k, v in res.items() if k != "valid_curve"}), flush=True)
            record["runs"] = [r for r in record["runs"] if r["setting"] != res["setting"]] + [res]
            path.write_text(json.dumps(record, indent=1))
    path.write_text(json.dumps(record, indent=1))
    (args.out / "lm_sweep.md").write_text(markdown(record))


if __name__ == "__main__":
    main()
