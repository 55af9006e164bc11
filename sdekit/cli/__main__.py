"""``python -m sdekit.cli``: the ``sdekit`` command."""
import sys

from . import main

sys.exit(main())
