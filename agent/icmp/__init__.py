"""ICMP echo: sans-io packets (packet.py) and the shared socket engine (engine.py)."""
