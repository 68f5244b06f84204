"""Moved to :mod:`eggroll.run.progress`; this name stays importable (the same module object)."""

import sys

from eggroll.run import progress as _moved

sys.modules[__name__] = _moved
