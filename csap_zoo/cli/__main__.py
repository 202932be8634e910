"""``python -m csap_zoo.cli``: the ``csap-zoo`` command (torchrun launches ``-m csap_zoo.cli train``)."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
