"""A test camera: a GStreamer RTSP server serving H.264 test video at /cam.

Runs under the system python3 (python3-gi is a Debian package, not in the venv):

    /usr/bin/python3 tests/camera.py --port 8554 --fps 25 [--user U --password P [--digest]]

Prints ``READY <port>`` on stdout once it listens. ``--silent`` instead accepts TCP connections and never
answers (a hung camera), without GStreamer.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time


def silent(port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
    print(f"READY {port}", flush=True)
    held = []
    while True:
        conn, _ = srv.accept()
        held.append(conn)  # keep it open, read nothing, answer nothing
        time.sleep(0.01)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--user", default="")
    ap.add_argument("--password", default="")
    ap.add_argument("--digest", action="store_true", help="Digest instead of Basic auth")
    ap.add_argument("--silent", action="store_true", help="accept connections, never answer")
    a = ap.parse_args()
    if a.silent:
        silent(a.port)
        return 0

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( videotestsrc is-live=true ! "
        f"video/x-raw,width=320,height=240,framerate={a.fps}/1 ! "
        "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 ! rtph264pay name=pay0 pt=96 )"
    )
    factory.set_shared(True)
    if a.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        if a.digest:
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
            auth.add_digest(a.user, a.password, token)
        else:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(a.user, a.password), token)
        server.set_auth(auth)
        perms = GstRtspServer.RTSPPermissions()
        perms.add_permission_for_role("user", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
        perms.add_permission_for_role("user", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
        factory.set_permissions(perms)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on port {a.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"READY {a.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
