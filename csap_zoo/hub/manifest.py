"""``csap_zoo.hub.manifest`` is the old name of ``csap_zoo.manifest`` (the weights manifest).

Importing it gives that module itself, so both names share every class, function and cache.
"""
import sys

from .. import manifest as _module

sys.modules[__name__] = _module
