"""Top-activating contexts of chosen SAE features, without SAEDashboard (the fast path the k-SAE
study used), plus the shared plumbing every "look at a feature" tool here needs: re-opening a
ReasonScore run (``scores_dir`` written by ``score_to_dir``) and streaming the activations of a few
features over the same token rows the scoring used.

Activations are those ReasonScore ranks by (decoder norms folded into the encoder, as SAEDashboard
does too), read at the SAE's own hook — ``blocks.N.hook_mlp_out`` for sparsify ``layers.N.mlp``
k-SAEs, through TransformerBridge. Special tokens named in the run's ``ignore_tokens`` (BOS/EOS by
default) never count, so attention-sink BOS tokens do not fill every top list.

Outputs: ``contexts.jsonl`` (one feature per line), ``contexts.md`` and ``contexts.html``.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from reason_plugins.files import write_text_atomic


# ---------------------------------------------------------------- a scored run
@dataclass
class ScoredRun:
    """What ``score_to_dir`` wrote: the config, and the result rebuilt exactly from its statistics."""

    path: Path
    config: dict
    result: object  # ReasonScoreResult

    def top(self, k: int) -> list[dict]:
        return self.result.top(k)

    def info(self, feature: int) -> dict:
        return self.result.feature_info(int(feature))


def load_scored_run(scores_dir) -> ScoredRun:
    from sae_lens_ext.reason_score_math import ReasonScoreResult, ReasonStats

    path = Path(scores_dir)
    missing = [n for n in ("run_config.json", "stats.safetensors") if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{str(path)!r} is not a ReasonScore output directory (missing {missing}; "
                                f"write one with `reason-sae score --out DIR` or score_to_dir)")
    config = json.loads((path / "run_config.json").read_text())
    stats = ReasonStats.load(path / "stats.safetensors")
    result = ReasonScoreResult.from_stats(stats, config.get("alpha", 0.7), config.get("eps", 1e-12), config)
    return ScoredRun(path, config, result)


_WRAPPED = re.compile(r"^\w+\((.+)\)$")  # how reason_score describes an object it was given: "Type(name)"


def _configured(value):
    """A model/SAE/data reference from run_config that can be reopened (a path or name), else None."""
    if not isinstance(value, str) or not value or value.startswith("tensor["):
        return None
    m = _WRAPPED.match(value)
    if m:
        return m.group(1) if Path(m.group(1)).exists() else None
    return value


def run_inputs(run: ScoredRun | None, model=None, sae=None, data=None) -> tuple:
    """(model, sae, data) of the scoring run, each overridable; names what cannot be reopened."""
    cfg = run.config if run else {}
    model = model if model is not None else _configured(cfg.get("model"))
    sae = sae if sae is not None else _configured(cfg.get("sae"))
    data = data if data is not None else _configured(cfg.get("data"))
    for name, value, key in (("model", model, "model"), ("SAE", sae, "sae"), ("dataset", data, "data")):
        if value is None:
            raise ValueError(f"cannot reopen the scoring run's {name} (run_config says {cfg.get(key)!r}); "
                             f"pass it explicitly (--{key if key != 'data' else 'dataset'})")
    return model, sae, data


def check_features(features, d_sae: int) -> list[int]:
    out = []
    for f in features:
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < d_sae:
            raise ValueError(f"feature index {f!r} is out of range: this SAE has d_sae={d_sae} (valid: 0..{d_sae - 1})")
        out.append(f)
    if not out:
        raise ValueError("no features given")
    return out


# ---------------------------------------------------------------- activations
@dataclass
class FeatureActivations:
    """Activations of chosen features of one SAE on one model: ``batches()`` yields (tokens [B, T],
    acts [B, T, F], keep [B, T]) for the run's token rows; ``texts()`` does the same for raw texts."""

    source: object  # reason_score.ActivationSource: the hook's activations, forward stopped after it
    encoder: object  # reason_score.FeatureEncoder: decoder norms folded in, encoded in feature chunks
    features: list[int]
    tokenizer: object
    hook: str
    ignore: list[int] = field(default_factory=list)
    context_size: int = 128
    prepend_bos: bool = True

    @classmethod
    def open(cls, model, sae, features, *, run: ScoredRun | None = None, sae_id=None, hook=None, backend="auto",
             device="cpu", context_size=None, ignore_tokens=None, tokenizer=None):
        from reason_plugins.saes import load_sae
        from sae_lens_ext.activations import ActivationSource, FeatureEncoder, ignore_ids, load_model, model_tokenizer

        cfg = run.config if run else {}
        sae = load_sae(sae, sae_id if sae_id is not None else cfg.get("sae_id"), device, cfg.get("sae_loader"))
        hook = hook or cfg.get("hook") or sae.cfg.metadata.hook_name
        features = check_features(list(features), int(sae.cfg.d_sae))
        model = load_model(model, hook, backend, device)
        source = ActivationSource(model, hook)
        if int(sae.cfg.d_in) != source.d_model:
            raise ValueError(f"SAE d_in={sae.cfg.d_in} does not match the model width d_model={source.d_model} at {hook!r}")
        tok = model_tokenizer(model, tokenizer)
        if ignore_tokens is None:  # the scoring run's choice, else BOS/EOS (attention sinks would top every list)
            ignore = cfg["ignore_tokens"] if "ignore_tokens" in cfg else ignore_ids(["bos", "eos"], tok)
        else:
            ignore = ignore_ids(ignore_tokens, tok)
        return cls(source, FeatureEncoder(sae, 4096), features, tok, hook, list(ignore or []),
                   int(context_size or cfg.get("context_size") or sae.cfg.metadata.context_size or 128),
                   bool(cfg.get("prepend_bos", True)))

    def encode(self, tokens):
        """[B, T] token ids -> [B, T, F] activations of the chosen features."""
        import torch

        x = self.source(tokens)
        flat = x.reshape(-1, x.shape[-1]).to(next(self.encoder.sae.parameters()).device)
        want = torch.tensor(self.features)
        out = torch.zeros(flat.shape[0], len(self.features))
        for start, acts in self.encoder.chunks(flat):
            inside = (want >= start) & (want < start + acts.shape[1])
            if inside.any():
                out[:, inside] = acts[:, want[inside] - start].float().cpu()
        return out.reshape(*tokens.shape, len(self.features))

    def keep_mask(self, tokens):
        import torch

        return ~torch.isin(tokens, torch.tensor(self.ignore, dtype=tokens.dtype)) if self.ignore else torch.ones_like(tokens, dtype=torch.bool)

    def batches(self, data, *, n_samples=None, batch_size=8, seed=None, text_column="text", progress=True, desc="activations"):
        from tqdm.auto import tqdm

        from sae_lens_ext.token_data import token_batches

        rows = token_batches(data, self.tokenizer, batch_size=batch_size, context_size=self.context_size,
                             prepend_bos=self.prepend_bos, n_samples=n_samples, seed=seed, text_column=text_column)
        total = -(-n_samples // batch_size) if n_samples else None
        for tokens in tqdm(rows, total=total, desc=desc, disable=not progress):
            yield tokens, self.encode(tokens), self.keep_mask(tokens)

    def texts(self, texts, *, batch_size=8, progress=False, desc="texts"):
        """Each text its own row (BOS prepended as configured), right-padded; padding is not kept.
        Causal attention means right padding never changes the real tokens' activations."""
        import torch
        from tqdm.auto import tqdm

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        for s in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress):
            ids = [([tok.bos_token_id] if self.prepend_bos and tok.bos_token_id is not None else []) +
                   tok.encode(t, add_special_tokens=False) for t in texts[s:s + batch_size]]
            width = max(map(len, ids))
            tokens = torch.tensor([row + [pad] * (width - len(row)) for row in ids], dtype=torch.long)
            real = torch.tensor([[i < len(row) for i in range(width)] for row in ids])
            yield tokens, self.encode(tokens), self.keep_mask(tokens) & real


# ---------------------------------------------------------------- top contexts (host-free)
class TopContexts:
    """Running top-``n`` activations per feature with their context windows, and per-token-id
    firing counts / activation sums (which tokens a feature fires on most often)."""

    def __init__(self, n_features: int, vocab: int, n: int = 20, window: int = 8):
        import torch

        self.n, self.w, self.F = int(n), int(window), n_features
        self.vals = torch.full((n_features, 0), float("-inf"))
        self.ctx = torch.zeros(n_features, 0, 2 * self.w + 1, dtype=torch.long)
        self.ctx_acts = torch.zeros(n_features, 0, 2 * self.w + 1)
        self.where = torch.zeros(n_features, 0, 2, dtype=torch.long)  # (row, position)
        self.fire_counts = torch.zeros(n_features, vocab, dtype=torch.int64)
        self.act_sums = torch.zeros(n_features, vocab, dtype=torch.float64)
        self.n_fired = torch.zeros(n_features, dtype=torch.int64)
        self.n_tokens = 0
        self.rows_seen = 0

    def add(self, tokens, acts, keep) -> None:
        """tokens [B, T], acts [B, T, F], keep [B, T] (False: never a top context nor counted)."""
        import torch

        B, T = tokens.shape
        acts = acts * keep.unsqueeze(-1)
        flat = acts.reshape(B * T, self.F).T  # [F, BT]
        fired = flat > 0
        self.n_fired += fired.sum(1)
        self.n_tokens += int(keep.sum())
        ids = tokens.reshape(-1)
        for f in range(self.F):
            self.fire_counts[f].index_add_(0, ids[fired[f]], torch.ones(int(fired[f].sum()), dtype=torch.int64))
            self.act_sums[f].index_add_(0, ids, flat[f].double())
        k = min(self.n, B * T)
        vals, idx = flat.topk(k, dim=1)
        rows, pos = idx // T, idx % T
        offsets = torch.arange(-self.w, self.w + 1)
        cols = pos.unsqueeze(-1) + offsets  # [F, k, 2w+1]
        inside = (cols >= 0) & (cols < T)
        cols = cols.clamp(0, T - 1)
        ctx = torch.where(inside, tokens[rows.unsqueeze(-1), cols], torch.full_like(cols, -1))
        ctx_acts = acts[rows.unsqueeze(-1), cols, torch.arange(self.F).view(-1, 1, 1)] * inside
        where = torch.stack([rows + self.rows_seen, pos], -1)
        vals_all = torch.cat([self.vals, vals], 1)
        best = vals_all.topk(min(self.n, vals_all.shape[1]), dim=1).indices
        pick = lambda old, new: torch.gather(torch.cat([old, new], 1), 1, best.view(*best.shape, *([1] * (old.dim() - 2))).expand(-1, -1, *old.shape[2:]))  # noqa: E731
        self.vals = torch.gather(vals_all, 1, best)
        self.ctx, self.ctx_acts, self.where = pick(self.ctx, ctx), pick(self.ctx_acts, ctx_acts), pick(self.where, where)
        self.rows_seen += B

    def feature_rows(self, features, tokenizer, top_tokens: int = 10) -> list[dict]:
        """One JSON-able dict per feature: frequency, max, top contexts, most frequent tokens."""
        out = []
        for f, feature in enumerate(features):
            contexts = []
            for j in range(self.vals.shape[1]):
                v = float(self.vals[f, j])
                if not v > 0:
                    continue  # the feature never fired more often than this
                ids = self.ctx[f, j].tolist()
                keep = [i for i, t in enumerate(ids) if t >= 0]
                contexts.append({"act": v, "row": int(self.where[f, j, 0]), "pos": int(self.where[f, j, 1]),
                                 "tokens": [tokenizer.decode([ids[i]]) for i in keep],
                                 "acts": [round(float(self.ctx_acts[f, j, i]), 5) for i in keep],
                                 "center": keep.index(self.w)})
            fired = int(self.n_fired[f])
            counts = self.fire_counts[f]
            order = counts.argsort(descending=True)[:top_tokens]
            tokens = [{"id": int(t), "token": tokenizer.decode([int(t)]), "count": int(counts[t]),
                       "share": int(counts[t]) / max(fired, 1), "mean_act": float(self.act_sums[f, t] / counts[t])}
                      for t in order.tolist() if counts[t] > 0]
            out.append({"feature": int(feature), "n_tokens": self.n_tokens, "n_fired": fired,
                        "frequency": fired / max(self.n_tokens, 1), "max_act": contexts[0]["act"] if contexts else 0.0,
                        "top_contexts": contexts, "top_tokens": tokens})
        return out


def top_contexts(model, sae, data, features, *, run: ScoredRun | None = None, n: int = 20, window: int = 8,
                 n_samples: int | None = 256, batch_size: int = 8, progress: bool = True, acts: FeatureActivations | None = None,
                 **open_kwargs) -> list[dict]:
    """Top-``n`` activating tokens (context ``window`` each side) of each feature, plus the tokens it
    fires on most often, over the first ``n_samples`` rows of ``data`` (packed as in scoring)."""
    for name, value, low in (("n", n, 1), ("window", window, 0), ("batch_size", batch_size, 1), ("n_samples", n_samples, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name}={value!r} is invalid (expected an int >= {low})")
    acts = acts or FeatureActivations.open(model, sae, features, run=run, **open_kwargs)
    cfg = run.config if run else {}
    top = TopContexts(len(acts.features), len(acts.tokenizer), n, window)
    for tokens, a, keep in acts.batches(data, n_samples=n_samples, batch_size=batch_size, seed=cfg.get("seed"),
                                        text_column=cfg.get("text_column", "text"), progress=progress, desc="top contexts"):
        top.add(tokens, a, keep)
    if top.n_tokens == 0:
        raise ValueError(f"the data {data!r} gave no token rows (empty, or shorter than context_size {acts.context_size})")
    rows = top.feature_rows(acts.features, acts.tokenizer)
    if run is not None:
        for row in rows:
            row["score"] = run.info(row["feature"])["score"]
    return rows


# ---------------------------------------------------------------- rendering
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


def write_contexts(rows: list[dict], out_dir) -> dict[str, Path]:
    out = Path(out_dir)
    return {"jsonl": write_text_atomic(out / "contexts.jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
            "markdown": write_text_atomic(out / "contexts.md", markdown_table(rows)),
            "html": write_text_atomic(out / "contexts.html", html_table(rows))}
