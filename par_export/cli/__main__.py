"""``python -m par_export.cli``: the ``par-export`` command."""

import sys

from par_export.cli import main

sys.exit(main())
