"""Moved to :mod:`eggroll.models.io.gguf`; this name stays importable (the same module object)."""

import sys

from eggroll.models.io import gguf as _moved

sys.modules[__name__] = _moved
