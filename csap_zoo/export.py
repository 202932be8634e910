"""``csap_zoo.export`` is the old name of ``csap_zoo.tools.export`` (ONNX, torch.export and TorchScript export, parity checks).

Importing it gives that module itself, so both names share every function and setting.
"""
import sys

from .tools import export as _module

sys.modules[__name__] = _module
