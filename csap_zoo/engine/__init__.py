"""``csap_zoo.engine`` is the old name of ``csap_zoo.training``.

Importing it (or ``csap_zoo.engine.config`` / ``.trainer`` / ``.optim``) gives the training modules themselves, so
both names share every class, function and setting.
"""
import importlib
import sys

from .. import training as _training

for _name in ("config", "optim", "trainer"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"{_training.__name__}.{_name}")
sys.modules[__name__] = _training
