"""Request-body size limit, enforced on the declared length and on the bytes actually received."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.errors import error_body, send_json


class BodySizeLimit:
    """`max_bytes` (the setting max_body_bytes) for every path but those of `per_path`: path ->
    (limit, the name of the setting that sets it), so a refusal names the setting to change."""

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, tuple[int, str]] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def _refuse(self, send: Send, limit: int, setting: str) -> None:
        message = f"request body exceeds the limit of {limit} bytes (setting {setting})"
        await send_json(send, 413, error_body("payload_too_large", message))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.per_path.get(scope["path"], (self.max_bytes, "max_body_bytes"))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > limit:
                await self._refuse(send, limit, setting)
                return
            await self.app(scope, receive, send)
            return
        # No declared length (chunked): read at most limit + 1, then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await self._refuse(send, limit, setting)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
