"""The documentation site: `mkdocs build --strict` with the reference generated from the docstrings.

One build into a temporary folder serves every test here: the build must pass in strict mode (a broken
link, a missing cross-reference target or a docstring griffe cannot parse fails it), every notebook must
be a page of the site, and every public name of the package must have an entry in the reference (read
from the site's ``objects.inv``, the inventory mkdocstrings writes of what it rendered).
"""

import os
import re
import shutil
import subprocess
import zlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
# Command-line plumbing (typer options), documented by the guides rather than the reference.
NOT_REFERENCE = ("eggroll.cli", "eggroll.commands")


def _mkdocs(*args: str, cwd: str) -> subprocess.CompletedProcess:
    mkdocs = shutil.which("mkdocs")
    assert mkdocs, "mkdocs is a test dependency (pip install -e '.[test]')"
    return subprocess.run([mkdocs, *args], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=600)


def _inventory(site) -> set[str]:
    raw = (site / "objects.inv").read_bytes()
    header = raw.split(b"\n", 4)
    assert header[0] == b"# Sphinx inventory version 2"
    return {line.split(" ", 1)[0] for line in zlib.decompress(header[4]).decode().splitlines()}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs") / "site"
    r = _mkdocs("build", "--strict", "--site-dir", str(out), cwd=ROOT)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-5000:]
    return out


def test_site_builds_strict_with_guides_reference_and_notebooks(site):
    assert (site / "index.html").exists()
    for page in ("reference/strategies", "reference/run", "reference/logging", "migrating-from-evosax"):
        assert (site / page / "index.html").exists(), page
    notebooks = sorted(n[: -len(".ipynb")] for n in os.listdir(os.path.join(ROOT, "notebooks")) if n.endswith(".ipynb"))
    assert notebooks
    for name in notebooks:
        html = (site / "notebooks" / name / "index.html").read_text()
        assert "jp-Cell" in html or "jp-Notebook" in html, name  # rendered by mkdocs-jupyter, not copied
    with open(os.path.join(ROOT, "mkdocs.yml")) as f:
        nav = f.read()
    assert all(f"notebooks/{n}.ipynb" in nav for n in notebooks), "every notebook is in the nav"


def test_every_link_of_a_notebook_page_opens_a_page(site):
    """mkdocs checks no link of a notebook page: each notebook's link to its guide gave a 404 on the site."""
    checked = 0
    for page in sorted((site / "notebooks").glob("*/index.html")):
        for href in re.findall(r'href="([^"#:]+)(?:#[^"]*)?"', page.read_text()):
            target = (page.parent / href).resolve()
            assert target.is_file() or (target / "index.html").is_file(), f"{page.parent.name}: {href}"
            checked += href.startswith("../../")
    assert checked >= 6, "each notebook links its guide"


def test_every_public_name_has_a_reference_entry(site):
    import griffe

    inventory = _inventory(site)
    assert "eggroll.strategies.eggroll.eggroll" in inventory and "eggroll.run.loop.run" in inventory
    package = griffe.load("eggroll", search_paths=[ROOT], resolve_aliases=True, resolve_external=False)
    missing = []

    def walk(module):
        for obj in list(module.members.values()):
            if not obj.is_alias and obj.is_module and obj.is_public:
                walk(obj)
        if module.path.startswith(NOT_REFERENCE):
            return
        for name, obj in module.members.items():
            exported = bool(module.exports) and name in module.exports
            if name.startswith("_") or (obj.is_alias and not exported) or not obj.is_public:
                continue
            if not obj.is_alias and obj.is_module:
                continue
            target = obj.final_target if obj.is_alias else obj
            if not {obj.path, target.path, *target.aliases} & inventory:
                missing.append(obj.path)

    walk(package)
    assert not missing, f"public names with no entry in docs/reference/*.md: {missing}"


def test_hand_written_api_page_is_gone_and_nothing_links_to_it():
    assert not os.path.exists(os.path.join(ROOT, "docs", "api.md"))
    texts = [os.path.join(ROOT, "README.md")]
    texts += [os.path.join(ROOT, "docs", n) for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md")]
    for path in texts:
        with open(path) as f:
            assert "api.md" not in f.read(), path


def test_strict_build_fails_on_a_missing_reference_and_a_broken_link(tmp_path):
    """The strict build is a real check: the same plugins fail on a bad cross-reference and a bad link."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(
        "# t\n\n::: eggroll.shaping\n\nSee [`centered_rank`][eggroll.shaping.centered_rank], "
        "[nothing][eggroll.shaping.no_such_function] and [a page](no-such-page.md).\n"
    )
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: t\nstrict: true\nvalidation:\n  unrecognized_links: warn\n"
        "plugins:\n  - autorefs\n  - mkdocstrings:\n      handlers:\n        python:\n"
        f"          paths: [{ROOT!r}]\n"
    )
    r = _mkdocs("build", "--strict", "--site-dir", str(tmp_path / "site"), cwd=str(tmp_path))
    assert r.returncode != 0
    assert "eggroll.shaping.no_such_function" in r.stderr and "no-such-page.md" in r.stderr, r.stderr[-3000:]
    assert "centered_rank'" not in r.stderr  # the good reference resolved


def test_migration_page_loops_run_and_learn():
    """Both tabs of docs/migrating-from-evosax.md (evosax and eggroll) run as written, 40 generations."""
    import re

    import jax

    with open(os.path.join(ROOT, "docs", "migrating-from-evosax.md")) as f:
        text = f.read()
    blocks = re.findall(r'=== "(\w+)"\n\n    ```python\n(.*?)    ```', text, re.S)
    assert [name for name, _ in blocks] == ["evosax", "eggroll"]
    for name, block in blocks:
        code = "\n".join(line[4:] for line in block.splitlines()).replace("range(200)", "range(40)")
        namespace: dict = {}
        # evosax broadcasts (10,) against (64, 10); the suite's conftest makes implicit rank promotion raise
        with jax.numpy_rank_promotion("allow" if name == "evosax" else "raise"):
            exec(compile(code, f"migrating-from-evosax.md ({name})", "exec"), namespace)
        start = float(namespace["fitness"](namespace["jnp"].zeros(10)))
        assert float(namespace["metrics"]["best_fitness"]) < 0.5 * start, name
