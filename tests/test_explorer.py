"""The live explorer (``reason-sae explore``, ``vllm_patches/explorer.py``) in a real browser: Playwright
driving the system's headless Chromium over loopback against one ``vllm serve`` (the tiny Llama fixture,
the fixture SAE, ``--api-key``) that every test here shares.

The page is held to the server's own answers: the steered text it shows equals ``/v1/chat/completions``
for the spec it offers to copy (greedy), its heatmap cells equal ``GET /v1/features/{id}``, a spec the
server refuses shows the server's message on the page, and the server keeps serving afterwards.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.serve import vllm_server

pytestmark = pytest.mark.slow

KEY = "explorer-test-key"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PROMPT = "Think step by step: what is 17 + 25?"


def call(url: str, body: dict | None = None, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def arms_run(root: Path) -> Path:
    """An lm-eval --log_samples dir of a two-arm steered_vllm run (samples_<task>@<arm>_<time>.jsonl), 12 problems."""
    run = root / "arms_run" / "tiny"
    run.mkdir(parents=True)
    for arm, right in (("baseline", range(0, 12, 2)), ("f5_s2", range(0, 12, 3))):
        rows = [{"doc_id": i, "target": str(i + 1), "exact_match": float(i in right), "total_tokens": 10 + i,
                 "filtered_resps": [f"{arm} says {i + (i not in right)}"]} for i in range(12)]
        (run / f"samples_tiny_arith@{arm}_2026-12-07T10-00-00.000000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run.parent


@pytest.fixture(scope="module")
def index(scored_run, tmp_path_factory):
    from reason_plugins.app.explore import build_index
    from reason_plugins.app.explore_arms import arms_index

    root = tmp_path_factory.mktemp("explore")
    idx = build_index(scored_run, top=10, rows=8)
    idx["arms"] = arms_index(arms_run(root), root, n_boot=200)
    path = root / "index.json"
    path.write_text(json.dumps(idx))
    return idx, path


@pytest.fixture(scope="module")
def server(llama_dir, index, tmp_path_factory):
    from reason_plugins.app.explore import plugin_registered

    assert plugin_registered(), "the installed metadata has no reason_explorer endpoint plugin: rerun `make setup` (pip install -e .)"
    idx, path = index
    config = {"saes": [{"sae": idx["sae"], "sae_id": idx["sae_id"], "hook": idx["hook"]}]}
    log = tmp_path_factory.mktemp("explore_log") / "serve.log"
    with vllm_server(llama_dir, config, log, "--api-key", KEY, env={"REASON_EXPLORE_INDEX": str(path)},
                     plugins="reason_steering,reason_steering_report,reason_explorer") as (base, _):
        yield base


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium_profile")), executable_path=CHROMIUM,
                                                        headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        p = context.new_page()
        p.set_default_timeout(120_000)
        p.goto(server + "/explore/")
        p.fill("#apikey", KEY)  # the page asks for the key on its first 401
        p.click("#keyform button")
        p.wait_for_selector("#features tbody tr")
        yield p
        context.close()


def generate(page, *, strength="3", window=("", ""), max_tokens=12) -> dict:
    page.fill("#strength-1", strength)
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#from-token", window[0])
    page.fill("#to-token", window[1])
    page.click("#generate")
    page.wait_for_function("window.explorer.last && window.explorer.last.state !== 'running'")
    return page.evaluate("window.explorer.last")


def test_app_is_public_and_data_needs_the_key(server):
    for asset in ("/explore/", "/explore/app.js", "/explore/app.css"):
        with urllib.request.urlopen(server + asset, timeout=30) as r:  # no key: the files hold no data
            assert r.status == 200 and len(r.read()) > 500
    assert call(server + "/explore/..%2Fexplorer.py", key=None)[0] == 404
    assert call(server + "/v1/explore/index", key=None)[0] == 401
    assert call(server + "/v1/explore/tokens", {"ids": [1]}, key=None)[0] == 401
    assert call(server + "/v1/explore/arms/plot", key=None)[0] == 401
    status, body = call(server + "/v1/explore/index")
    assert status == 200 and body["registry"]["model"] == "tiny" and body["features"]
    assert call(server + "/v1/explore/tokens", {"ids": [-1]})[0] == 400


def test_steering_the_top_feature_matches_the_api(page, server, index):
    idx, _ = index
    top = max(idx["features"], key=lambda r: r["score"])
    first = page.locator("#features tbody tr").first
    assert first.locator("td").first.inner_text() == f"#{top['feature']}"  # ranked by ReasonScore, best first
    first.get_by_role("link", name=f"steer feature {top['feature']}").click()
    page.wait_for_selector("#generate")
    assert page.input_value("#feat-1") == str(top["feature"])
    last = generate(page)
    assert last["state"] == "done", last.get("error")
    spec = json.loads(page.inner_text("#copy-spec"))
    assert spec["edits"] == [{"feature": top["feature"], "mode": "set", "value": float(f"{3 * top['max_act']:.6g}")}]
    body = {"model": "tiny", "messages": [{"role": "user", "content": page.input_value("#prompt")}], "max_tokens": 12, "temperature": 0}
    steered = call(server + "/v1/chat/completions", {**body, "vllm_xargs": {"steering": json.dumps(spec)}})[1]
    baseline = call(server + "/v1/chat/completions", body)[1]
    assert page.inner_text("#out-steered") == steered["choices"][0]["message"]["content"] == last["texts"][1]
    assert page.inner_text("#out-baseline") == baseline["choices"][0]["message"]["content"] == last["texts"][0]
    assert call(server + f"/v1/steering/{last['ids'][1]}")[1]["steered"] is True
    assert call(server + f"/v1/steering/{last['ids'][0]}")[1]["steered"] is False
    for arm, rid in zip(("baseline", "steered"), last["ids"]):  # the heatmap's cells are the readout route's values
        read = call(server + f"/v1/features/{rid}")[1]
        rec = next(iter(read["requests"].values()))[idx["hook"]]
        col = last["request"]["readout"]["features"].index(top["feature"])
        cells = page.locator(f"#heat-{arm} span").evaluate_all("els => els.map(e => [e.dataset.feature, e.dataset.value, e.textContent])")
        assert len(cells) == len(rec["token_ids"]) > 0
        assert [float(v) for _, v, _ in cells] == [row[col] for row in rec["activations"]]
        assert {int(f) for f, _, _ in cells} == {top["feature"]}
        tokens = call(server + "/v1/explore/tokens", {"ids": rec["token_ids"]})[1]["tokens"]
        assert [t for _, _, t in cells] == tokens
    curl = page.inner_text("#copy-curl")
    assert "/v1/chat/completions" in curl and KEY not in curl  # the key never lands in what the page offers to copy
    assert json.loads(page.inner_text("#copy-arms")) == {"name": f"f{top['feature']}_s3", "steering": spec}


@pytest.mark.parametrize("strength, window, words", [("abc", ("", ""), "value"), ("2", ("5", "2"), "empty or inverted")])
def test_refusals_show_the_servers_message(page, server, strength, window, words):
    page.goto(server + "/explore/#/playground")
    page.wait_for_selector("#generate")
    last = generate(page, strength=strength, window=window)
    assert last["state"] == "error"
    alert = page.inner_text("#alert")
    assert words in alert and page.is_visible("#alert")
    spec = json.loads(page.inner_text("#copy-spec"))
    status, body = call(server + "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 1,
                                                     "vllm_xargs": {"steering": json.dumps(spec)}})
    assert status == 400 and body["error"]["message"] in alert  # the server's own words, not the page's
    again = generate(page, strength="1", window=("", ""), max_tokens=4)  # and it keeps serving
    assert again["state"] == "done" and again["texts"][1]


def test_features_page_sorts_searches_and_links(page, server, index):
    idx, _ = index
    page.goto(server + "/explore/#/features")
    page.wait_for_selector("#features tbody tr")
    page.get_by_role("button", name="feature").click()  # sort by id, descending
    ids = [int(t.lstrip("#")) for t in page.locator("#features tbody tr td:first-child").all_inner_texts()]
    assert ids == sorted((r["feature"] for r in idx["features"]), reverse=True)
    target = idx["features"][-1]["feature"]
    page.fill("#search", str(target))
    rows = page.locator("#features tbody tr").all_inner_texts()
    assert rows and all(r.startswith(f"#{str(target)}") for r in rows)
    page.get_by_role("link", name=f"#{target}", exact=True).click()
    page.wait_for_selector("text=Steer this feature in the playground")
    assert f"Feature #{target}" in page.inner_text("h2")


def test_arms_page_shows_the_comparison_and_each_answer(page, server, index):
    idx, _ = index
    arms = idx["arms"]
    page.goto(server + "/explore/#/arms")
    page.wait_for_selector("#problems tbody tr")
    page.wait_for_function("document.getElementById('forest') && document.getElementById('forest').naturalWidth > 0")
    rows = page.locator("#arms-table tbody tr").all_inner_texts()
    assert len(rows) == sum(len(m) for m in arms["report"]["arms"].values()) == 2  # exact_match and total_tokens of f5_s2
    em = arms["report"]["arms"]["f5_s2"]["exact_match"]
    assert rows[0].split("\t")[:5] == ["f5_s2", "exact_match", "12", f"{em['baseline'][0]:.3f}", f"{em['steered'][0]:.3f}"]
    cells = page.locator("#problems tbody tr").nth(1).locator("td")
    assert cells.nth(0).inner_text() == "tiny_arith #1" and cells.nth(1).inner_text() == "2"
    assert cells.nth(2).locator(".out").text_content() == "baseline says 2"
    assert cells.nth(3).locator(".out").text_content() == "f5_s2 says 2"
    assert cells.nth(3).locator("summary").inner_text().startswith("exact_match 0")
