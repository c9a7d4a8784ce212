"""RTSP/SDP/RTP parsing for the camera probe (sans-io)."""
