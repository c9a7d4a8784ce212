"""Transparent huge pages for the agent's heap, when it probes many targets.

At 10,000 ICMP targets every packet touches a target's round and, once a round, its series, spread over
~100 MB of Python objects: far more than the CPU's TLB maps with 4 KiB pages (Zen's 2,048 second-level
entries cover 8 MiB), so most of those touches also walk the page tables, which in a virtual machine costs
twice over. Backing the heap with 2 MiB pages took the whole agent from 30.9 and 32.1 % of a core to 30.0 and
30.0 % (bench/icmp.py, alternating, one session).

Debian's default for transparent huge pages is ``madvise``: a process gets them where it asks. Python's
allocator cannot be told to ask, so :func:`advise` does it afterwards: every private anonymous mapping
(pymalloc's arenas, malloc's heap) that is at least half resident is marked MADV_HUGEPAGE and collapsed at
once with MADV_COLLAPSE (Linux 6.1); new mappings are taken in at the next pass. Mostly empty mappings
(thread stacks, spare arenas) are left alone, so the footprint of a small agent does not grow. Where madvise
is refused (a kernel built without transparent huge pages) or missing (not Linux), the passes end.

``MOGLI_HUGE_PAGES=on|off`` in the environment overrides the automatic choice (:func:`wanted`).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sys

log = logging.getLogger("mogli.agent.hugepages")

ENV = "MOGLI_HUGE_PAGES"
MIN_TARGETS = 2000
"""ICMP targets from which the agent asks for huge pages by itself: ~4 KB of objects a target makes 8 MiB,
what the TLB maps with small pages."""
HUGE = 2 << 20
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
MIN_RESIDENT = 0.5
"""A mapping is advised when at least this share of it is resident (collapsing a sparse one would make its
empty pages resident)."""


def setting(env: str | None = None) -> str:
    """``MOGLI_HUGE_PAGES`` (or ``env``): ``auto`` (also unset), ``on`` or ``off``; ValueError for another value."""
    value = (os.environ.get(ENV, "auto") if env is None else env).strip().lower()
    if value not in ("auto", "on", "off"):
        raise ValueError(f"{ENV}={value!r}: must be auto, on or off")
    return value


def wanted(icmp_targets: int, env: str | None = None) -> bool:
    """Whether the agent asks for huge pages: as :func:`setting` says, and for ``auto`` from :data:`MIN_TARGETS`
    ICMP targets on."""
    value = setting(env)
    return value == "on" or (value == "auto" and icmp_targets >= MIN_TARGETS)


def _madvise() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def candidates(smaps: str, min_resident: float = MIN_RESIDENT) -> list[tuple[int, int]]:
    """The 2 MiB-aligned ranges (start, end) to advise, from the text of /proc/self/smaps: private anonymous
    writable mappings (no file; unnamed or the [heap]) at least ``min_resident`` resident."""
    out: list[tuple[int, int]] = []
    head: list[str] | None = None
    for line in smaps.splitlines():
        first, _, rest = line.partition(" ")
        if first.endswith(":"):
            if first == "Rss:" and head is not None:
                start, end = (int(x, 16) for x in head[0].split("-"))
                rss = int(rest.split()[0]) * 1024
                lo, hi = -(-start // HUGE) * HUGE, end // HUGE * HUGE
                if hi - lo >= HUGE and rss >= min_resident * (end - start):
                    out.append((lo, hi))
                head = None
            continue
        parts = line.split()
        if len(parts) >= 5 and "-" in parts[0]:
            name = parts[5] if len(parts) > 5 else ""
            head = parts if parts[1] == "rw-p" and parts[4] == "0" and name in ("", "[heap]") else None
    return out


class HugePages:
    """The passes of one agent: :meth:`advise` again whenever the heap may have grown (cheap when it has not)."""

    def __init__(self) -> None:
        self.fn = _madvise()
        self.done: set[tuple[int, int]] = set()  # ranges advised and collapsed already
        self.bytes = 0

    @property
    def active(self) -> bool:
        return self.fn is not None

    def advise(self) -> int:
        """Advise and collapse the ranges not done yet; returns the bytes advised in this pass (when madvise is
        refused, the passes stop: :attr:`active` turns False)."""
        if self.fn is None:
            return 0
        try:
            with open("/proc/self/smaps") as f:
                smaps = f.read()
        except OSError as e:
            log.info("huge pages: cannot read /proc/self/smaps (%s): not used", e)
            self.fn = None
            return 0
        new = 0
        for lo, hi in candidates(smaps):
            if (lo, hi) in self.done:
                continue
            if self.fn(lo, hi - lo, MADV_HUGEPAGE) != 0:
                err = ctypes.get_errno()
                if err == errno.ENOMEM:  # the range changed under us (an arena freed): next pass
                    continue
                log.info("huge pages: madvise refused (%s): not used", os.strerror(err))
                self.fn = None
                return new
            # at once, not when khugepaged comes by. Its result is not checked: a collapse that fails (EAGAIN when
            # pages are busy, EINVAL before Linux 6.1) leaves the range advised, and khugepaged collapses it later
            self.fn(lo, hi - lo, MADV_COLLAPSE)
            self.done.add((lo, hi))
            new += hi - lo
        self.bytes += new
        return new
