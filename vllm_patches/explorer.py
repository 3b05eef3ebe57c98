"""The live explorer, served by ``vllm serve`` itself: a ``vllm.endpoint_plugins`` entry point
(``reason_explorer``, opt-in like the report routes: ``VLLM_PLUGINS=reason_steering,reason_steering_report,
reason_explorer``) that adds

    GET  /explore/                 the offline web app (index.html, app.js, app.css from explorer_assets/)
    GET  /v1/explore/index         the scored run's index (features, scores, max activations) and what this
                                   server's operator registered (served model, SAEs, vector names)
    POST /v1/explore/tokens        {"ids": [...]} -> {"tokens": [each id decoded alone]} (heatmap labels)
    GET  /v1/explore/arms/plot     the forest plot of the arms run the index names (PNG)

The app's files carry no data and no key, so ``/explore/`` is public; everything with data sits under
``/v1``, which vLLM's ``--api-key`` guards: the page asks for the key once (kept in the tab's
sessionStorage) and sends it as ``Authorization: Bearer``. The page generates through the server's own
``/v1/completions`` / ``/v1/chat/completions`` and reads features through ``/v1/features/{id}``, so every
spec passes the one validator (``vllm_patches.frontend``) and a refusal is the server's own 400 text.

The index is a JSON file written by ``reason-sae explore`` (the application layer, which may read a
ReasonScore run); its path reaches the server in ``REASON_EXPLORE_INDEX``.
"""

# at module level and without postponed annotations: FastAPI reads the routes' signatures
import json
import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

NAME = "reason_explorer"
INDEX_ENV = "REASON_EXPLORE_INDEX"
ASSETS = Path(__file__).with_name("explorer_assets")
ASSET_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
MAX_TOKEN_IDS = 8192


def _error(message: str, code: int) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": code}}, status_code=code)


def load_index(path: str | None) -> dict:
    """The index ``reason-sae explore`` wrote, or an empty one saying why there is none."""
    if not path:
        return {"features": [], "note": f"no scored run: start the server with `reason-sae explore --scores DIR` (or set {INDEX_ENV})"}
    return json.loads(Path(path).read_text())


def registry(args) -> dict:
    """What clients may name on this server: the served model name and the steering config's SAEs and vectors."""
    from vllm_patches.config import CONFIG_KEY, ENV_VAR, parse_config

    extra = getattr(args, "additional_config", None) or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    raw = extra.get(CONFIG_KEY) if isinstance(extra, dict) else None
    raw = raw if raw is not None else os.environ.get(ENV_VAR)
    config = parse_config(raw) if raw else None
    names = getattr(args, "served_model_name", None) or [getattr(args, "model", None)]
    return {"model": names[0] if isinstance(names, list | tuple) else names,
            "saes": [{"sae": s.sae, "sae_id": s.sae_id, "hook": s.hook} for s in (config.saes if config else ())],
            "vectors": [name for name, _ in (config.vectors if config else ())],
            "vector_hooks": list(config.vector_hooks) if config else []}


class ExplorerPlugin:
    name = NAME
    required_tasks = ("generate",)

    def attach_router(self, app) -> None:
        router = APIRouter()

        @router.get("/explore", include_in_schema=False)
        async def explore_root():
            return RedirectResponse("/explore/")

        @router.get("/explore/", include_in_schema=False)
        async def explore_page():
            return HTMLResponse((ASSETS / "index.html").read_text(), headers={"Cache-Control": "no-cache"})

        @router.get("/explore/{asset}", include_in_schema=False)
        async def explore_asset(asset: str):
            if asset not in ASSET_TYPES:  # a fixed list: no path from a request is ever opened
                return _error(f"no explorer asset {asset!r}; there are {sorted(ASSET_TYPES)}", 404)
            return FileResponse(ASSETS / asset, media_type=ASSET_TYPES[asset], headers={"Cache-Control": "no-cache"})

        @router.get("/v1/explore/index")
        async def explore_index(raw_request: Request):
            state = raw_request.app.state
            return JSONResponse({**state.reason_explore_index, "registry": state.reason_explore_registry})

        @router.post("/v1/explore/tokens")
        async def explore_tokens(raw_request: Request):
            try:
                ids = (await raw_request.json())["ids"]
                if not isinstance(ids, list) or len(ids) > MAX_TOKEN_IDS or not all(type(i) is int and i >= 0 for i in ids):
                    raise ValueError
            except Exception:
                return _error(f'expected {{"ids": [token ids]}} with at most {MAX_TOKEN_IDS} non-negative integers', 400)
            client = getattr(raw_request.app.state, "reason_steering_engine", None) or raw_request.app.state.reason_explore_engine
            tokenizer = client.renderer.get_tokenizer()
            if any(i >= len(tokenizer) for i in ids):
                return _error(f"token id out of range: this tokenizer has {len(tokenizer)} tokens", 400)
            return JSONResponse({"tokens": [tokenizer.decode([i]) for i in ids]})

        @router.get("/v1/explore/arms/plot")
        async def explore_arms_plot(raw_request: Request):
            arms = raw_request.app.state.reason_explore_index.get("arms") or {}
            if not arms.get("plot") or not Path(arms["plot"]).is_file():  # the index's own path, never a request's
                return _error("no arms run in this explorer (start it with `reason-sae explore --arms RUN_DIR`)", 404)
            return FileResponse(arms["plot"], media_type="image/png")

        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        state.reason_explore_engine = engine_client
        state.reason_explore_index = load_index(os.environ.get(INDEX_ENV))
        state.reason_explore_registry = registry(args)
