"""The OpenAI-compatible route of a replica: POST {route}/v1/chat/completions and
GET {route}/v1/models, so a served model can be a judge. `structured_outputs:
{choice: [...]}` (or `guided_choice`) constrains the reply to one of the
strings, on engines that support it."""
from __future__ import annotations

import time

from raveval.engines import GenParams


async def chat_completions(engine, model_name: str, request):
    """Answer one HTTP request of the route with `engine` (a starlette Response)."""
    from starlette.responses import JSONResponse

    def error(status: int, message: str, kind: str = "invalid_request_error"):
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    path = request.url.path.rstrip("/")
    if path.endswith("/v1/models"):
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "raveval"}]})
    if request.method != "POST" or not path.endswith("/v1/chat/completions"):
        return error(404, f"no route {request.method} {path}", "not_found")
    try:
        body = await request.json()
        messages, params = openai_request(body)
    except (ValueError, KeyError, TypeError) as e:
        return error(400, f"bad request: {e}")
    if params.choices and not engine.supports_choices:
        return error(400, f"model {model_name}'s engine does not support structured_outputs.choice")
    try:
        res = await engine.generate(messages, params)
    except Exception as e:
        return error(500, f"{type(e).__name__}: {e}", "server_error")
    return JSONResponse({
        "id": f"chatcmpl-{time.time_ns():x}", "object": "chat.completion", "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.output_tokens,
                  "total_tokens": res.prompt_tokens + res.output_tokens},
    })


def openai_request(body: dict):
    """(messages, GenParams) of an OpenAI chat completions request body."""
    if body.get("stream"):
        raise ValueError("stream is not supported")
    if body.get("n", 1) != 1:
        raise ValueError("n must be 1")
    messages = []
    for m in body["messages"]:
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(m.get("role"), str) or not isinstance(content, str):
            raise ValueError("each message needs a role and text content")
        messages.append({"role": m["role"], "content": content})
    stop = body.get("stop") or ()
    choices = (body.get("structured_outputs") or {}).get("choice") or body.get("guided_choice") or ()
    params = GenParams(
        max_new_tokens=int(body.get("max_completion_tokens") or body.get("max_tokens") or 512),
        temperature=float(body.get("temperature", 1.0)),
        top_p=float(body.get("top_p", 1.0)),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        seed=body.get("seed"),
        choices=tuple(str(c) for c in choices),
    )
    return messages, params
