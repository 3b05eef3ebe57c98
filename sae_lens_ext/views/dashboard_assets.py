"""Offline SAEDashboard pages: SAEDashboard's HTML loads d3 v6 and plotly from CDNs; ``make_offline``
points those script tags at ``assets/`` beside the pages (written by ``write_assets``: plotly.min.js
from the ``plotly`` Python package; d3 v5.16 shipped in ``sae_lens_ext/assets`` with a tiny adapter
to d3 v6's event-listener convention) or inlines them (one self-contained ~5 MB file per page), and
lets a ``#FEATURE`` URL fragment choose the feature a page opens on.

String and file work only; SAEDashboard itself is not imported here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ASSETS = Path(__file__).with_name("assets")
CDN = {"https://d3js.org/d3.v6.min.js": ("d3.v5.min.js", "d3-v6-events.js"),
       "https://cdn.plot.ly/plotly-latest.min.js": ("plotly.min.js",)}
_START_KEY = re.compile(r"const START_KEY = (\"[^\"]*\");")


def write_assets(out_dir) -> Path:
    """Copy the scripts SAEDashboard pages need into ``out_dir/assets`` (once)."""
    assets = Path(out_dir) / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    for name, src in _asset_sources().items():
        if not (assets / name).is_file() or (assets / name).stat().st_size != src.stat().st_size:
            shutil.copyfile(src, assets / name)
    shutil.copyfile(ASSETS / "LICENSE-d3.txt", assets / "LICENSE-d3.txt")
    return assets


def _asset_sources() -> dict[str, Path]:
    try:
        import plotly
    except ImportError as exc:
        raise ImportError("offline dashboards need the `plotly` Python package (it ships plotly.min.js)") from exc
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not plotly_js.is_file():
        raise FileNotFoundError(f"plotly.min.js not found at {str(plotly_js)!r}")
    return {"d3.v5.min.js": ASSETS / "d3.v5.min.js", "d3-v6-events.js": ASSETS / "d3-v6-events.js", "plotly.min.js": plotly_js}


def make_offline(page: str, inline: bool = False) -> str:
    """Replace SAEDashboard's CDN script tags by local ``assets/`` ones (or inline scripts), and let a
    ``#FEATURE`` URL fragment choose the feature shown first."""
    sources = _asset_sources()
    for url, names in CDN.items():
        tag = f'<script src="{url}"></script>'
        if tag not in page:
            raise ValueError(f"unexpected SAEDashboard HTML: no {tag!r} to replace (SAEDashboard version changed?)")
        if inline:
            new = "\n".join(f"<script>\n{sources[n].read_text()}\n</script>" for n in names)
        else:
            new = "\n".join(f'<script src="assets/{n}"></script>' for n in names)
        page = page.replace(tag, new)
    return _START_KEY.sub(lambda m: "const START_KEY = (decodeURIComponent(location.hash.slice(1)) in DASHBOARD_DATA) ? "
                          f"decodeURIComponent(location.hash.slice(1)) : {m.group(1)};", page, count=1)
