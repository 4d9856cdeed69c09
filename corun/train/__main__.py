"""``python -m corun.train`` (and ``torchrun ... -m corun.train``)."""
import sys

from .command import main

sys.exit(main())
