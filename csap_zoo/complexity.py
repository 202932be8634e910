"""``csap_zoo.complexity`` is the old name of ``csap_zoo.tools.complexity`` (parameter and MAC counting).

Importing it gives that module itself, so both names share every function and setting.
"""
import sys

from .tools import complexity as _module

sys.modules[__name__] = _module
