"""``python -m corun.train`` (and ``torchrun ... -m corun.train``): the command line of :mod:`corun.cli.train`."""
import sys

from ..cli.train import main

sys.exit(main())
