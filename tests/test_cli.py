"""The ``reason-sae`` console script as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from reason_plugins.app.cli import SUBCOMMANDS

SCRIPT = Path(sys.executable).parent / "reason-sae"


def test_help_lists_every_subcommand():
    """Each subcommand on its own line of the listing, followed by the start of its own help text."""
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "200"}).stdout
    for name, (_module, help_text) in SUBCOMMANDS.items():
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(help_text[:30])}", out, re.M), f"{name!r} not listed:\n{out}"


def test_help_describes_the_demo_as_it_runs_by_default():
    """The default demo is the packaged real model over CHAMP text, and the listing says so."""
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "200"}).stdout
    demo_line = next(line for line in out.splitlines() if re.match(r"^\s+demo\s", line))
    assert "SmolLM2-135M-Instruct" in demo_line and "CHAMP" in demo_line, demo_line
    assert "embedded tiny" not in out


def test_plugins_lists_the_paper_vocabulary():
    out = subprocess.run([str(SCRIPT), "plugins", "--json"], capture_output=True, text=True, check=True).stdout
    assert "paper" in json.loads(out)["vocabulary"]


def test_unknown_subcommand_fails_clearly():
    res = subprocess.run([str(SCRIPT), "frobnicate"], capture_output=True, text=True)
    assert res.returncode == 2 and "invalid choice: 'frobnicate'" in res.stderr
