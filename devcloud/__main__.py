"""``python -m devcloud``: the ``devcloud`` command."""

import sys

from devcloud.cli import main

sys.exit(main())
