"""``csap_zoo.engine`` is the old name of ``csap_zoo.training``.

Importing it (or ``csap_zoo.engine.config`` / ``.trainer`` / ``.optim``) gives the training modules themselves, so
both names share every class, function and setting.
"""
import sys

from .. import training as _training
from ..training import config, optim, trainer

for _module in (config, optim, trainer):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
sys.modules[__name__] = _training
