#!/usr/bin/env python3
"""Render alertmanager.yml.j2 with variables from a YAML file (what the Ansible role does with its vars).

    python3 deploy/alertmanager/render.py deploy/alertmanager/example-vars.yml > alertmanager.yml
    amtool check-config alertmanager.yml

Needs jinja2 and pyyaml (both in the project's `test` extra).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jinja2
import yaml

HERE = Path(__file__).resolve().parent


def render(variables: dict[str, Any]) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template("alertmanager.yml.j2").render(**variables)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: render.py VARS.yml  (writes the config to stdout)", file=sys.stderr)
        return 2
    try:
        variables = yaml.safe_load(Path(argv[1]).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        print(f"{argv[1]}: {e}", file=sys.stderr)
        return 1
    if not isinstance(variables, dict):
        print(f"{argv[1]}: must be a mapping of mogli_alertmanager_* variables", file=sys.stderr)
        return 1
    try:
        sys.stdout.write(render(variables))
    except jinja2.TemplateError as e:
        print(f"{argv[1]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
