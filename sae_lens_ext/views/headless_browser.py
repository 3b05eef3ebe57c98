"""Checking a written page the way a reader sees it: ``chromium_dom`` renders a page (file path,
optionally ``#fragment``) in headless Chromium with every host name unresolvable, so nothing can come
from the network, and returns the DOM after its scripts ran; ``drawn_panels`` counts what
SAEDashboard's scripts drew in it. Used by ``reason-sae dashboard --check`` and the tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    raise FileNotFoundError("no Chromium found (Debian: `apt-get install -y chromium`)")


def chromium_dom(page, *, budget_ms: int = 5000, timeout: int = 120, chromium: str | None = None) -> str:
    """The DOM of ``page`` (a file path, optionally with ``#fragment``) after its scripts ran, in
    headless Chromium with every host name unresolvable, so nothing can come from the network."""
    page = str(page)
    path, _, frag = page.partition("#")
    url = Path(path).resolve().as_uri() + (f"#{frag}" if frag else "")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium or find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--user-data-dir={profile}", f"--virtual-time-budget={int(budget_ms)}", "--dump-dom", url]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0 or "<html" not in res.stdout:
        raise RuntimeError(f"chromium failed on {page!r} (exit {res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


def drawn_panels(dom: str) -> dict:
    """Counts of elements SAEDashboard's scripts create (zero in a page whose scripts did not run),
    and the feature's max activation from the drawn title (the scripts themselves are not searched)."""
    dom = re.sub(r"<script.*?</script>", "", dom, flags=re.S)
    return {"tokens": len(re.findall(r'<span class="token"', dom)), "sequences": len(re.findall(r'<div class="seq"', dom)),
            "plots": len(re.findall(r'<svg class="main-svg"', dom)), "table_rows": len(re.findall(r'<td class="left-aligned"', dom)),
            "max_act": float(m.group(1)) if (m := re.search(r"MAX = ([-0-9.eE+]+)", dom)) else None}
