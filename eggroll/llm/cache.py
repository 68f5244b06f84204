"""A response cache in front of any backend: in memory, optionally saved as JSON.

::

    from eggroll.llm.cache import CachedBackend
    llm = CachedBackend(OpenAIBackend(...), path="evollm_cache.json")

The key of one answer is a SHA-256 of (backend name, prompt, temperature,
max_tokens, stop strings, per-prompt seed). The seed only enters when
``temperature > 0`` (as ``seed + i`` for prompt ``i`` of a batch): a greedy
answer does not depend on it. Repeating a run with the same seeds therefore
costs no model calls, and a sampled retry (new seed) is never served a cached
failure. Prompts not in the cache go to the wrapped backend: when greedy as one
batch, when sampling one batch per contiguous run of them, started at that run's
seed. A backend that samples a batch from one key (``seeds_per_prompt = False``,
e.g. :class:`~eggroll.llm.local.LocalBackend`) gives a prompt a sample that
depends on its whole batch, so a sampled batch with any prompt missing is asked
whole, at its seed, and all its answers are stored (replacing those its cached
prompts had from other batches). Either way every answer of a batch that was not
fully cached equals what an uncached call would have given, and repeating a call
returns the same answers; with a one-key backend a fully cached batch whose
answers were stored by other batches returns those.

The JSON file is read when the cache is created and rewritten atomically
(temporary file + rename) after every batch that added answers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from eggroll.llm.base import Backend, LLMBackend


def cache_key(
    backend_name: str, prompt: str, temperature: float, max_tokens: int, stop: Sequence[str], seed: int
) -> str:
    """The cache key of one prompt's answer under the given settings."""
    sampled_seed = int(seed) if temperature > 0 else None
    settings = [backend_name, prompt, round(float(temperature), 6), int(max_tokens), list(stop), sampled_seed]
    return hashlib.sha256(json.dumps(settings, ensure_ascii=False).encode("utf-8")).hexdigest()


class CachedBackend(Backend):
    """Wraps a backend and remembers its answers.

    Args:
        backend: any :class:`eggroll.llm.base.LLMBackend`.
        path: optional JSON file to load from and save to.

    Attributes:
        hits: answers served from the cache.
        misses: answers asked from the wrapped backend.
        seeds_per_prompt: the wrapped backend's (``True`` when it does not say).
    """

    def __init__(self, backend: LLMBackend, path: str | os.PathLike | None = None):
        self.backend = backend
        self.name = backend.name
        self.seeds_per_prompt = bool(getattr(backend, "seeds_per_prompt", True))
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, str] = {}
        self.hits = self.misses = 0
        if self.path is not None and self.path.is_dir():
            raise ValueError(
                f"the cache path {self.path} is a folder; give a JSON file's path, e.g. {self.path / 'cache.json'}"
            )
        if self.path is not None and self.path.exists():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"the cache file {self.path} is not valid JSON ({err}); delete it or pass another path"
                ) from err
            if not isinstance(loaded, dict):
                raise ValueError(f"the cache file {self.path} must hold a JSON object of key -> text")
            self.entries = {str(k): str(v) for k, v in loaded.items()}

    def __len__(self) -> int:
        return len(self.entries)

    def _complete(self, prompts: list[str], temperature: float, max_tokens: int, stop: Sequence[str], seed: int):
        """Answers from the cache where possible, asks the wrapped backend for the rest."""
        keys = [cache_key(self.name, p, temperature, max_tokens, stop, seed + i) for i, p in enumerate(prompts)]
        missing = [i for i, k in enumerate(keys) if k not in self.entries]
        whole = bool(missing) and temperature > 0 and not self.seeds_per_prompt  # a sample depends on its batch
        asked = list(range(len(prompts))) if whole else missing
        self.hits += len(prompts) - len(asked)
        self.misses += len(asked)
        runs = [asked] if asked else []
        if temperature > 0 and not whole:  # prompt i is sampled with seed + i: each contiguous run at its own seed
            runs = [[i for _, i in run] for _, run in itertools.groupby(enumerate(missing), lambda t: t[1] - t[0])]
        for run in runs:
            texts = self.backend.generate(
                [prompts[i] for i in run], temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed + run[0]
            )
            for i, text in zip(run, texts, strict=True):
                self.entries[keys[i]] = text
        if missing:
            self.save()
        return [self.entries[k] for k in keys]

    def save(self) -> None:
        """Writes the cache to ``path`` (no-op without a path)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.entries, f, ensure_ascii=False)
        os.replace(tmp, self.path)
