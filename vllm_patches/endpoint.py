"""What was applied and what was read, over HTTP: a ``vllm.endpoint_plugins`` entry point that adds

    GET /v1/steering/{request_id}
    GET /v1/features/{request_id}

to ``vllm serve``. ``request_id`` is the ``id`` the client got back (``cmpl-...``,
``chatcmpl-...``); the answer lists every engine request behind it (one per prompt and per ``n``
choice) with what the plugin applied: spec hash, layers, steered tokens, mean |delta| (and
``error`` for a request the worker could not steer), plus ``"steered": false`` when none was.
``/v1/features`` returns the feature readout of each finished engine request behind the id, as
``SteeredLLM.readout`` does (``{engine id: {hook: {"token_ids", "positions", "activations" |
"top_k", "missing_positions", ...}}}``); a 404 says why there is none: unknown id or no readout
asked, or evicted (finished readouts are kept up to ``readout_memory_mb``). A request still running
is read as it stands (``"finished": false``).
The routes only read what the workers already keep (``reason_steering_report`` through the
engine client's ``collective_rpc``, as vLLM's endpoint-plugin contract asks).

vLLM loads endpoint plugins only when named in ``VLLM_PLUGINS``, which then also filters the
general plugins: ``VLLM_PLUGINS=reason_steering,reason_steering_report vllm serve ...``.
"""

# at module level and without postponed annotations: FastAPI reads the route's signature to
# inject the Request (this module is only imported by the API server, which has FastAPI)
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from vllm_patches.request_ids import belongs_to

NAME = "reason_steering_report"


def records_for(report: dict, request_id: str) -> dict:
    """The report entries of the engine requests behind one client-facing request id."""
    return {internal: rec for internal, rec in report.items() if belongs_to(internal, request_id)}


class SteeringReportPlugin:
    name = NAME
    required_tasks = ("generate",)

    def attach_router(self, app) -> None:
        router = APIRouter()

        @router.get("/v1/steering/{request_id}")
        async def steering_report(request_id: str, raw_request: Request):
            client = getattr(raw_request.app.state, "reason_steering_engine", None)
            if client is None:
                return JSONResponse({"error": {"message": "no engine behind this server", "code": 503}}, status_code=503)
            reports = await client.collective_rpc("reason_steering_report")
            found = records_for(reports[0] if reports else {}, request_id)
            return JSONResponse({"request_id": request_id, "steered": bool(found), "requests": found})

        @router.get("/v1/features/{request_id}")
        async def feature_readout(request_id: str, raw_request: Request):
            client = getattr(raw_request.app.state, "reason_steering_engine", None)
            if client is None:
                return JSONResponse({"error": {"message": "no engine behind this server", "code": 503}}, status_code=503)
            from vllm_patches.engine.readout import to_lists, unpack

            found = unpack((await client.collective_rpc("reason_steering_readout", kwargs={"request_ids": [request_id]}) or [{}])[0])
            ready = {r: rec for r, rec in found.items() if not rec.get("evicted")}
            if ready:
                return JSONResponse({"request_id": request_id, "requests": to_lists(ready)})
            if found:
                why = ("its readout was evicted: the workers keep finished readouts up to readout_memory_mb of the "
                       "steering config, oldest first out")
            else:
                why = "no finished request with a readout has this id (unknown id, or no readout was asked)"
            return JSONResponse({"error": {"message": f"request {request_id!r}: {why}", "code": 404}}, status_code=404)

        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        state.reason_steering_engine = engine_client
