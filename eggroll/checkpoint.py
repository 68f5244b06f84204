"""Moved to :mod:`eggroll.run.checkpoint`; this name stays importable (the same module object)."""

import sys

from eggroll.run import checkpoint as _moved

sys.modules[__name__] = _moved
