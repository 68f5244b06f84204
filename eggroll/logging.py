"""Moved to :mod:`eggroll.run.logging`; this name stays importable (the same module object)."""

import sys

from eggroll.run import logging as _moved

sys.modules[__name__] = _moved
