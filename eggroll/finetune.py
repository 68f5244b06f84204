"""Moved to :mod:`eggroll.apps.finetune`; this name stays importable (the same module object)."""

import sys

from eggroll.apps import finetune as _moved

sys.modules[__name__] = _moved
