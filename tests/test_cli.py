"""The ``reason-sae`` console script as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from reason_plugins.app.cli import SUBCOMMANDS

SCRIPT = Path(sys.executable).parent / "reason-sae"


def test_help_lists_every_subcommand():
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert name in out


def test_plugins_lists_the_paper_vocabulary():
    out = subprocess.run([str(SCRIPT), "plugins", "--json"], capture_output=True, text=True, check=True).stdout
    assert "paper" in json.loads(out)["vocabulary"]


def test_unknown_subcommand_fails_clearly():
    res = subprocess.run([str(SCRIPT), "frobnicate"], capture_output=True, text=True)
    assert res.returncode == 2 and "invalid choice: 'frobnicate'" in res.stderr
