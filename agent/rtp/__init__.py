"""Passive RTP stream analysis: capture decoding (pcapfile, decode), the analyser, live capture."""
