"""Run every bench/<name>.py's run() and rewrite docs/benchmarks.md from the results.

Each run() returns rows: {"benchmark", "ours", "anchor", "anchor_name", "unit", "better", "notes"};
every figure is already the median of several runs, ours and the anchor measured in the same run.
`python -m bench [name ...]` runs only the named modules and keeps the other sections of the file.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
RAW = ROOT / "docs" / "benchmarks.json"


HELPERS: set[str] = set()  # modules in bench/ that are not benchmarks themselves


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}"
    return str(v)


def ratio(row: dict[str, Any]) -> str:
    ours, anchor = row.get("ours"), row.get("anchor")
    if not isinstance(ours, int | float) or not isinstance(anchor, int | float) or not ours or not anchor:
        return "-"
    r = anchor / ours if row.get("better") == "lower" else ours / anchor
    return f"{r:.2f}x {'better' if r >= 1 else 'worse'}"


def render(results: dict[str, dict[str, Any]]) -> str:
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); do not edit by hand. Each figure is the median of several",
        "runs; ours and the anchor were measured in the same run on the same machine. The ratio is",
        "always \"how many times better ours is\" (anchor/ours where lower is better, ours/anchor where higher is).",
        "",
    ]
    for name in sorted(results):
        res = results[name]
        out += [f"## {res['title']}", "", f"Run {res['when']} on {res['machine']}.", ""]
        if res.get("error"):
            out += ["**This benchmark failed in the last run:**", "", "```", res["error"].strip(), "```", ""]
            continue
        out += ["| benchmark | ours | anchor | anchor is | unit | ratio | notes |", "|---|---|---|---|---|---|---|"]
        for row in res["rows"]:
            out.append(f"| {row['benchmark']} | {fmt(row.get('ours'))} | {fmt(row.get('anchor'))} | "
                       f"{row.get('anchor_name') or '-'} | {row.get('unit', '')} | {ratio(row)} | "
                       f"{row.get('notes', '')} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    names = argv or sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                           if not m.name.startswith("_") and m.name not in HELPERS)
    results: dict[str, dict[str, Any]] = json.loads(RAW.read_text()) if RAW.exists() else {}
    failed = 0
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        title = (mod.__doc__ or name).strip().splitlines()[0]
        print(f"== bench {name}: {title}", flush=True)
        entry: dict[str, Any] = {"title": title, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                 "machine": machine()}
        try:
            entry["rows"] = mod.run()
        except Exception:  # record the failure in the document, go on with the rest
            entry["error"] = traceback.format_exc()
            print(entry["error"], file=sys.stderr)
            failed += 1
        for row in entry.get("rows", []):
            print(f"   {row['benchmark']}: ours {fmt(row.get('ours'))} vs {row.get('anchor_name')} "
                  f"{fmt(row.get('anchor'))} {row.get('unit', '')} ({ratio(row)})", flush=True)
        results[name] = entry
        RAW.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        DOC.write_text(render(results))
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
