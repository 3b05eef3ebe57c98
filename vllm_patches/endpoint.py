"""What was applied, over HTTP: a ``vllm.endpoint_plugins`` entry point that adds

    GET /v1/steering/{request_id}

to ``vllm serve``. ``request_id`` is the ``id`` the client got back (``cmpl-...``,
``chatcmpl-...``); the answer lists every engine request behind it (one per prompt and per ``n``
choice) with what the plugin applied: spec hash, layers, steered tokens, mean |delta| (and
``error`` for a request the worker could not steer), plus ``"steered": false`` when none was.
The routes only read the report the workers already keep (``reason_steering_report`` through the
engine client's ``collective_rpc``, as vLLM's endpoint-plugin contract asks).

vLLM loads endpoint plugins only when named in ``VLLM_PLUGINS``, which then also filters the
general plugins: ``VLLM_PLUGINS=reason_steering,reason_steering_report vllm serve ...``.
"""

import re

# at module level and without postponed annotations: FastAPI reads the route's signature to
# inject the Request (this module is only imported by the API server, which has FastAPI)
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

NAME = "reason_steering_report"
_CHILD = re.compile(r"^\d+_")  # n > 1: vLLM's per-choice requests are "<index>_<parent id>"


def records_for(report: dict, request_id: str) -> dict:
    """The report entries of the engine requests behind one client-facing request id."""
    found = {}
    for internal, rec in report.items():
        base = _CHILD.sub("", internal)
        if base == request_id or base.startswith(request_id + "-"):
            found[internal] = rec
    return found


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

        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        state.reason_steering_engine = engine_client
