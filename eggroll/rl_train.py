"""Moved to :mod:`eggroll.apps.rl`; this name stays importable (the same module object)."""

import sys

from eggroll.apps import rl as _moved

sys.modules[__name__] = _moved
