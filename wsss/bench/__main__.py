"""``python -m wsss.bench``: see :mod:`wsss.bench.runner`."""

import sys

from wsss.bench.runner import main

sys.exit(main())
