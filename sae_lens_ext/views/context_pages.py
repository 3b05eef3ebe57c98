"""Rendering top-activating contexts (the rows ``contexts.top_contexts`` returns): one context as
text with its peak token marked, a Markdown table, and a self-contained HTML page (no scripts).

Pure string work on JSON-able rows, so the pages can be rebuilt from ``contexts.jsonl`` alone.
"""

from __future__ import annotations

import html


def _show(token: str) -> str:
    return token.replace("\n", "\\n")


def context_text(ctx: dict, mark=("[[", "]]")) -> str:
    toks = [_show(t) for t in ctx["tokens"]]
    toks[ctx["center"]] = mark[0] + toks[ctx["center"]] + mark[1]
    return "".join(toks)


def markdown_table(rows: list[dict], n_contexts: int = 3) -> str:
    lines = ["| feature | score | freq | max | fires most on | top contexts ([[peak]]) |", "|---|---|---|---|---|---|"]
    for r in rows:
        toks = ", ".join(f"`{_show(t['token']).strip() or repr(t['token'])}` {t['share']:.0%}" for t in r["top_tokens"][:3])
        ctxs = "<br>".join(f"{c['act']:.3f}: {context_text(c).replace('|', '&#124;')}" for c in r["top_contexts"][:n_contexts])
        score = f"{r['score']:+.5f}" if "score" in r else "—"
        lines.append(f"| {r['feature']} | {score} | {r['frequency']:.2%} | {r['max_act']:.3f} | {toks} | {ctxs} |")
    return "\n".join(lines) + "\n"


def html_table(rows: list[dict], n_contexts: int = 5, title: str = "Top-activating contexts") -> str:
    """A self-contained page (no scripts): token backgrounds scale with the feature's activation."""
    body = []
    for r in rows:
        ctx_html = []
        for c in r["top_contexts"][:n_contexts]:
            peak = max(c["acts"]) or 1.0
            spans = "".join(
                f'<span class="tok{" peak" if i == c["center"] else ""}" title="{a:.4f}" '
                f'style="background: rgba(255,140,0,{max(a, 0) / peak:.2f})">{html.escape(_show(t))}</span>'
                for i, (t, a) in enumerate(zip(c["tokens"], c["acts"])))
            ctx_html.append(f'<div class="ctx"><b>{c["act"]:.3f}</b> {spans}</div>')
        toks = ", ".join(f"<code>{html.escape(_show(t['token']))}</code> {t['share']:.0%}" for t in r["top_tokens"][:5])
        score = f"{r['score']:+.5f}" if "score" in r else "—"
        body.append(f'<tr id="f{r["feature"]}" class="feature-row"><td>{r["feature"]}</td><td>{score}</td><td>{r["frequency"]:.2%}</td>'
                    f'<td>{r["max_act"]:.3f}</td><td>{toks}</td><td>{"".join(ctx_html)}</td></tr>')
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px;vertical-align:top;font-size:13px}.ctx{font-family:monospace;white-space:pre;margin:2px 0}"
             ".tok.peak{outline:1px solid #c00}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><table><tr><th>feature</th><th>ReasonScore</th><th>frequency</th><th>max</th>"
            f"<th>fires most on (share of firings)</th><th>top contexts</th></tr>{''.join(body)}</table></body></html>\n")
