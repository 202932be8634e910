"""``csap_zoo.benchmark`` is the old name of ``csap_zoo.tools.profiling`` (latency and memory measurement).

Importing it gives that module itself, so both names share every function and setting.
"""
import sys

from .tools import profiling as _module

sys.modules[__name__] = _module
