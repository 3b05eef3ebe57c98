"""The live explorer on SmolLM2-135M-Instruct, measured in a real browser: ``reason-sae explore`` started as a
user starts it, then Playwright in the system's headless Chromium clicks Generate and reads the page's own
clock (``window.explorer.last.timing``: click to the first streamed token, click to both texts done).

    python benchmarks/explorer.py [--work DIR] [--runs 3] [--max-tokens 128] [--shots docs/explorer]

The scored run is made here (ReasonScore needs an SAE: a seeded random standard SAE, d_sae 2304, whose
encoder is its scaled decoder so features fire, at block 18; scored over 32 rows of CHAMP text): generation
time does not depend on what the SAE learned. Prints one JSON object: the page's weight (bytes of every
response the first load fetched, by URL), the time to the drawn features table, and per run the time to the
first token and to the full pair, with the tokens streamed. ``--shots`` writes PNG screenshots of each page at
1280 and 800 px wide.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HOOK = "blocks.18.hook_resid_post"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PROMPT = "A train travels 60 km in 45 minutes. What is its average speed in km/h? Think step by step."


def scored_run(work: Path) -> Path:
    from reason_plugins.champ import reasoning_texts
    from reason_plugins.models import resolve_model
    from sae_lens_ext.reason_score.outputs import score_to_dir
    from sae_lens_ext.training.tiny_saes import firing_sae

    out = work / "reason_score"
    if (out / "run_config.json").is_file():
        return out
    sae = firing_sae("standard", HOOK, seed=0, d_sae=2304)
    sae.save_model(str(work / "sae"))
    data = work / "champ.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in reasoning_texts(n=64, seed=0, include_solutions=False)))
    score_to_dir(str(resolve_model("smollm2-135m-instruct")), str(work / "sae"), str(data), out, top_k=20,
                 ignore_tokens=["bos", "eos"], context_size=128, n_samples=32, progress=False)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/explorer_bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--strength", default="4")
    ap.add_argument("--shots", default=None, help="directory for PNG screenshots (1280 and 800 px wide)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    scores = scored_run(work)
    prepared_s = time.monotonic() - t0
    port = free_port()
    log = (work / "explore.log").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "reason-sae"), "explore", "--scores", str(scores), "--port", str(port),
                             "--top", "100"], stdout=subprocess.PIPE, stderr=log, text=True, env=os.environ)
    try:
        url = ""
        while not url.startswith("explorer:"):
            url = proc.stdout.readline()
            if not url and proc.poll() is not None:
                raise SystemExit(f"reason-sae explore exited {proc.returncode}: see {work / 'explore.log'}")
        url = url.split(None, 1)[1].strip()
        result = {"model": "smollm2-135m-instruct", "prepare_s": round(prepared_s, 1), "explore_ready_s": round(time.monotonic() - t0, 1),
                  "url": url, **measure(url, args)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    print(json.dumps(result, indent=1))


def measure(url: str, args) -> dict:
    from playwright.sync_api import sync_playwright

    shots = Path(args.shots) if args.shots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    out = {"runs": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(300_000)
        weights = {}

        def took(response):
            try:
                weights[response.url.replace(url.rsplit("/explore/", 1)[0], "")] = len(response.body())
            except Exception:  # a redirect has no body
                pass

        page.on("response", took)
        t = time.monotonic()
        page.goto(url)
        page.wait_for_selector("#features tbody tr")
        out["features_table_ms"] = round((time.monotonic() - t) * 1000)
        page.remove_listener("response", took)
        out["page_weight_bytes"] = weights
        out["page_weight_total"] = sum(weights.values())
        out["app_bytes"] = sum(v for k, v in weights.items() if k.startswith("/explore/"))
        for width in (1280, 800):
            if shots:
                page.set_viewport_size({"width": width, "height": 900})
                page.goto(url + "#/features")
                page.wait_for_selector("#features tbody tr")
                page.screenshot(path=str(shots / f"features-{width}.png"))
        page.set_viewport_size({"width": 1280, "height": 900})
        top = page.locator("#features tbody tr td:first-child a").first.inner_text().lstrip("#")
        page.goto(url + f"#/feature/{top}")
        page.wait_for_selector("text=Steer this feature in the playground")
        if shots:
            page.screenshot(path=str(shots / "feature-1280.png"), full_page=True)
        page.goto(url + f"#/playground?feature={top}")
        page.wait_for_selector("#generate")
        page.fill("#prompt", PROMPT)
        for i in range(args.runs):
            page.fill("#max-tokens", str(args.max_tokens))
            page.fill("#strength-1", args.strength)
            page.click("#generate")
            page.wait_for_function("window.explorer.last && window.explorer.last.state !== 'running'")
            last = page.evaluate("window.explorer.last")
            streamed = page.evaluate("document.getElementById('progress').value")
            toks = [len(page.locator(f"#heat-{arm} span").all()) for arm in ("baseline", "steered")]
            out["runs"].append({"run": i + 1, "state": last["state"], "first_token_ms": round(last["timing"].get("first_token_ms", 0)),
                                "pair_done_ms": round(last["timing"]["done_ms"]), "tokens_read": toks, "progress": streamed})
        if shots:
            for width in (1280, 800):
                page.set_viewport_size({"width": width, "height": 900})
                page.screenshot(path=str(shots / f"playground-{width}.png"), full_page=True)
        browser.close()
    return out


if __name__ == "__main__":
    main()
