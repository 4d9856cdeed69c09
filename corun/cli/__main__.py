"""``python -m corun.cli`` (the same as the ``corun`` command)."""
import sys

from . import main

sys.exit(main())
