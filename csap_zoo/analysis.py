"""``csap_zoo.analysis`` is the old name of ``csap_zoo.tools.analysis`` (propagated vs independent attention maps).

Importing it gives that module itself, so both names share every function and setting.
"""
import sys

from .tools import analysis as _module

sys.modules[__name__] = _module
