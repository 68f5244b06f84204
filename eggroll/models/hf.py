"""Moved to :mod:`eggroll.models.io.hf`; this name stays importable (the same module object)."""

import sys

from eggroll.models.io import hf as _moved

sys.modules[__name__] = _moved
