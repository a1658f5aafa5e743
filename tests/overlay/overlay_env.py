"""Moved to the testbed package: import from prismtb.overlay. This name stays so tests written
against it keep working while they move."""

from prismtb.overlay import *  # noqa: F401,F403
from prismtb.overlay import __all__  # noqa: F401
