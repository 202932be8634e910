"""``csap_zoo.hub.serialization`` is the old name of ``csap_zoo.models.serialization`` (the folder format).

Importing it gives that module itself, so both names share every function and setting.
"""
import sys

from ..models import serialization as _module

sys.modules[__name__] = _module
