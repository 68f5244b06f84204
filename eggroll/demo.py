"""Moved to :mod:`eggroll.apps.demo`; this name stays importable (the same module object)."""

import sys

from eggroll.apps import demo as _moved

sys.modules[__name__] = _moved
