"""`python -m bertfast.bench`: the same as `bertfast bench`."""
import sys

from .command import run

sys.exit(run())
