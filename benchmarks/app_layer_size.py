"""Size of eggroll's application layer in code lines (issue 12's "shorter than today" measure).

Code lines are lines that hold a token other than a docstring, a comment or blank space. The app
layer is every module of the package except the core (strategies' maths and their argument checks, noise,
low-rank and integer ops, populations, shaping, types), the models and the problems' function definitions
(every module of ``problems/bbob`` but its report, its old runner path and its ``__init__``: the suites'
functions, transformations, instances and noise models).

    python benchmarks/app_layer_size.py              # the working tree
    python benchmarks/app_layer_size.py e40a04d      # a git revision, for comparison
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_APP = re.compile(
    r"eggroll/(strategies/(_core|_checks|eggroll|open_es)|noise|lowrank|intops|population|shaping|types)\.py$"
    r"|eggroll/models/|eggroll/problems/bbob/(?!(__init__|report|runner)\.py$)"
    r"|eggroll/problems/rl/|eggroll/problems/tasks\.py$"
)


def code_lines(source: str) -> int:
    """Lines with code, docstrings and comments left out."""
    docs: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body:
            first = body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docs.update(range(first.lineno, first.end_lineno + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docs)
    return len(lines)


def sources(revision: str | None) -> dict[str, str]:
    if revision is None:
        return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "eggroll").rglob("*.py"))}
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", revision, "eggroll"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    show = lambda n: subprocess.run(["git", "show", f"{revision}:{n}"], cwd=ROOT, capture_output=True, text=True).stdout
    return {n: show(n) for n in names if n.endswith(".py")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("revision", nargs="?", default=None, help="a git revision (default: the working tree)")
    args = ap.parse_args()
    try:
        found = sources(args.revision)
    except subprocess.CalledProcessError as e:  # one line, not git's traceback
        git = e.stderr.strip().splitlines() or [f"exit {e.returncode}"]
        ap.exit(2, f"error: git cannot read revision {args.revision!r} ({git[-1]}); give a commit, branch or tag\n")
    app = {name: src for name, src in found.items() if not NOT_APP.search(name)}
    sizes = {name: code_lines(src) for name, src in app.items()}
    for name, n in sorted(sizes.items(), key=lambda kv: kv[1]):
        print(f"{n:6d}  {name}")
    print(f"{sum(sizes.values()):6d}  code lines in {len(sizes)} app-layer modules ({args.revision or 'working tree'})")


if __name__ == "__main__":
    main()
