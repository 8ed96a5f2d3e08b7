"""``python -m spark_torch``: the ``spark-torch`` command line (see :mod:`spark_torch.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
