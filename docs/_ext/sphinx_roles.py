"""A griffe extension: Sphinx roles in eggroll's docstrings become mkdocs cross-references.

The docstrings name other objects the Sphinx way (``:func:`run```, ``:class:`~eggroll.lowrank.LowRank```),
which reads well under ``help()``. For the site, each role whose name resolves to an eggroll object
becomes an autorefs link ``[`LowRank`][eggroll.lowrank.LowRank]``: in ``mkdocs build --strict`` a link
to an object that no reference page renders fails the build. A name that resolves outside eggroll
(``jax.shard_map``) becomes plain code; a name that resolves nowhere is a warning (so strict fails).
"""

from __future__ import annotations

import builtins
import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|obj|exc|const):`([^`]+)`")
_logger = griffe.get_logger("eggroll.docs")


def _lookup(pkg: griffe.Module, path: str) -> str | None:
    """The canonical path of ``path`` (``eggroll.x.y``) in ``pkg``, or None."""
    parts = path.split(".")
    if parts[0] != pkg.name:
        return None
    obj: griffe.Object | griffe.Alias = pkg
    try:
        for part in parts[1:]:
            obj = obj.members[part]
            if isinstance(obj, griffe.Alias):
                obj = obj.final_target
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return obj.path


def _rewrite(pkg: griffe.Module, obj: griffe.Object) -> None:
    def replace(m: re.Match) -> str:
        raw = m.group(1).strip()
        short = raw.startswith("~")
        name = raw.lstrip("~.")
        title = name.rsplit(".", 1)[-1] if short else name
        target = _lookup(pkg, name)
        if target is None:
            try:
                resolved = obj.resolve(name.split(".")[0])
            except griffe.NameResolutionError:
                resolved = None
            if resolved is not None:
                full = ".".join([resolved, *name.split(".")[1:]])
                target = _lookup(pkg, full)
                if target is None and not full.startswith(f"{pkg.name}."):
                    return f"`{title}`"  # outside eggroll: plain code
            elif hasattr(builtins, name) or name.split(".")[0] in {
                "jax",
                "jnp",
                "np",
                "numpy",
                "optax",
                "flax",
                "orbax",
                "evosax",
            }:
                return f"`{title}`"
        if target is None:
            _logger.warning(f"{obj.relative_filepath}:{obj.lineno}: cannot resolve {m.group(0)}")
            return f"`{title}`"
        return f"[`{title}`][{target}]"

    obj.docstring.value = _ROLE.sub(replace, obj.docstring.value)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles into autorefs links once the whole package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.docstring is not None:
                _rewrite(pkg, obj)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
