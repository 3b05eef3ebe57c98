"""The index page of a dashboard directory: one row per feature (rank, id linked to its SAEDashboard
page, ReasonScore statistics, top groups, and the token-driven control's metrics when given), extra
links, and the figures. Pure HTML rendering of JSON-able rows (``ScoredRun.info`` plus control rows).
"""

from __future__ import annotations

import html


def index_page(rows: list[dict], pages: dict, *, title: str, images: dict | None = None, links: dict | None = None) -> str:
    """The index: one row per feature (id, score, top groups, control metrics when given, link)."""
    has_control = any("verdict" in r for r in rows)
    head = ["rank", "feature", "ReasonScore", "μ+", "μ−", "entropy", "top groups"]
    head += ["token R²", "chat/reasoning", "verdict"] if has_control else []
    body = []
    for i, r in enumerate(rows, 1):
        cells = [str(i), f'<a href="{html.escape(pages[r["feature"]])}">{r["feature"]}</a>' if r["feature"] in pages else str(r["feature"]),
                 f"{r['score']:+.5f}", f"{r['mu_pos']:.4f}", f"{r['mu_neg']:.4f}", f"{r['entropy']:.3f}",
                 ", ".join(f"{g['group']} ({g['mu']:.3f})" for g in r["top_groups"])]
        if has_control:
            ratio = r.get("context_ratio")
            cells += [f"{r['token_r2']:.2f}" if "token_r2" in r else "—", "—" if ratio is None else f"{ratio:.2f}", r.get("verdict", "—")]
        body.append(f'<tr class="feature-row" data-feature="{r["feature"]}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    extra = "".join(f'<p><a href="{html.escape(href)}">{html.escape(label)}</a></p>' for label, href in (links or {}).items())
    imgs = "".join(f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}" style="max-width:100%"><figcaption>{html.escape(cap)}</figcaption></figure>'
                   for cap, src in (images or {}).items())
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;"
             "font-size:13px}figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top;max-width:48%}")
    note = ("<p>Feature pages are SAEDashboard's feature-centric view (works offline). "
            "Token R² near 1 or chat/reasoning near 1: the feature follows the word, not the reasoning.</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{note}{extra}<table id='features'><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>"
            f"{''.join(body)}</table>{imgs}</body></html>\n")
