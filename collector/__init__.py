"""mogli-collector: receives agent reports and exports them to Prometheus."""

from agent import __version__

__all__ = ["__version__"]
