"""Network namespaces for tests: create, run code inside, always tear down.

Sockets keep the namespace they were created in, so a test can enter a namespace
(this thread only, setns(2)), open the engine's sockets there, and come back.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import uuid
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"  # interface names: at most 15 characters


@contextlib.contextmanager
def netns(name: str, ping_group_range: str | None = None) -> Iterator[str]:
    """A fresh namespace with lo up; deleted afterwards."""
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        if ping_group_range is not None:
            sh("ip", "netns", "exec", name, "sysctl", "-q", "-w", f"net.ipv4.ping_group_range={ping_group_range}")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the block in namespace ``name`` (the calling thread only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        try:
            yield
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"cannot return to the original namespace: {os.strerror(err)}")
    finally:
        os.close(here)
        os.close(there)
