"""mogli-agent: measures link quality and camera stream health on a MOGLI edge router."""

__version__ = "0.1.0"
