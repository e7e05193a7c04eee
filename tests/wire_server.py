"""A loopback server speaking each provider's wire protocol, for offline tests.

It answers OpenAI chat completions (JSON and SSE), Gemini ``generateContent`` /
``streamGenerateContent`` (JSON and SSE), Anthropic messages (JSON and SSE events), Ollama
``/api/chat`` (JSON and NDJSON), Mistral chat completions (JSON and SSE; under
:data:`MISTRAL_PREFIX`, since its path is OpenAI's) and Cohere's v2 ``/v2/chat`` (JSON and SSE
events), in each API's documented shapes, error bodies included. It records every request so
tests can assert exactly what went over the wire.

The provider SDKs send through ``httpx2``, which respx cannot intercept; a real socket on
127.0.0.1 tests the real client code instead.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["MISTRAL_PREFIX", "Recorded", "WireServer", "mistral_tool_call_id"]

# Mistral's chat completions path is OpenAI's (/v1/chat/completions): a Mistral client points at
# ``server.url + MISTRAL_PREFIX + "/v1"`` and its requests are recorded without the prefix
MISTRAL_PREFIX = "/mistral"

_GEMINI = re.compile(r"/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)")
_GEMINI_EMBED = re.compile(r"/models/(?P<model>[^/:]+):(?P<method>batchEmbedContents|embedContent)")


@dataclass(frozen=True)
class ToolCall:
    """A scripted reply: the model asks for this tool (in the protocol's own format)."""

    name: str
    args: dict[str, Any]
    id: str = "call_1"


@dataclass
class Recorded:
    provider: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    stream: bool
    at: float = field(default_factory=time.monotonic)  # when the request arrived
    fault: str | None = None  # the fault injected into its answer, if any


# (status, provider) -> error body, in each API's documented shape
def _error_body(provider: str, kind: str, model: str) -> tuple[int, dict[str, Any]]:
    if provider == "openai":
        return {
            "auth": (
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided: sk-te***",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
            ),
            "forbidden": (
                403,
                {
                    "error": {
                        "message": "You are not allowed to use this model.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "unsupported_country_region_territory",
                    }
                },
            ),
            "not_found": (
                404,
                {
                    "error": {
                        "message": f"The model `{model}` does not exist or "
                        "you do not have access to it.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "model_not_found",
                    }
                },
            ),
            "context": (
                400,
                {
                    "error": {
                        "message": "This model's maximum context length is "
                        "8192 tokens. However, your messages resulted in 9000 "
                        "tokens. Please reduce the length of the messages.",
                        "type": "invalid_request_error",
                        "param": "messages",
                        "code": "context_length_exceeded",
                    }
                },
            ),
            "rate": (
                429,
                {
                    "error": {
                        "message": "Rate limit reached",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                },
            ),
            "server": (
                500,
                {
                    "error": {
                        "message": "The server had an error",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
            ),
        }[kind]
    if provider == "anthropic":
        kinds = {
            "auth": (401, "authentication_error", "invalid x-api-key"),
            "forbidden": (
                403,
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            ),
            "not_found": (404, "not_found_error", f"model: {model}"),
            "context": (
                400,
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum",
            ),
            "rate": (429, "rate_limit_error", "Number of request tokens has exceeded your limit."),
            "server": (529, "overloaded_error", "Overloaded"),
        }
        status, etype, message = kinds[kind]
        return status, {"type": "error", "error": {"type": etype, "message": message}}
    if provider == "gemini":
        kinds = {
            "auth": (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
            "forbidden": (403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."),
            "not_found": (
                404,
                "NOT_FOUND",
                f"models/{model} is not found for API version "
                "v1beta, or is not supported for generateContent.",
            ),
            "context": (
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the "
                "maximum number of tokens allowed (1048576).",
            ),
            "rate": (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted."),
            "server": (500, "INTERNAL", "An internal error has occurred."),
        }
        status, state, message = kinds[kind]
        details: list[Any] = []
        if kind == "auth":
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ]
        return status, {
            "error": {"code": status, "message": message, "status": state, "details": details}
        }
    if provider == "mistral":
        # the gateway answers a bad key with {"message", "request_id"}; the API itself with
        # {"object": "error", "message", "type", "param", "code"} — an unknown model is a 400
        # "invalid_model" there, not a 404
        if kind in ("auth", "forbidden"):
            status = 401 if kind == "auth" else 403
            text = "Unauthorized" if kind == "auth" else "Forbidden"
            return status, {"message": text, "request_id": "0f3e6b1c2d4a5e6f7a8b9c0d1e2f3a4b"}
        kinds_m = {
            "not_found": (400, f"Invalid model: {model}", "invalid_model", "1500"),
            "context": (
                400,
                "Prompt contains 40000 tokens and 0 draft tokens, too large for model with "
                "32768 maximum context length",
                "invalid_request_error",
                "3051",
            ),
            "rate": (429, "Rate limit exceeded", "rate_limited", "1300"),
            "server": (500, "Internal server error", "internal_server_error", "1000"),
        }
        status, text, etype, code = kinds_m[kind]
        return status, {
            "object": "error",
            "message": text,
            "type": etype,
            "param": None,
            "code": code,
        }
    if provider == "cohere":
        kinds_c = {
            "auth": (401, "invalid api token"),
            "forbidden": (403, "You do not have access to this model with your current plan."),
            "not_found": (
                404,
                f"model '{model}' not found, make sure the correct model ID was used and that "
                "you have access to the model.",
            ),
            "context": (
                400,
                "too many tokens: the total number of tokens in the prompt cannot exceed "
                "128000 - received 130000. Try using a shorter prompt, or enabling prompt "
                "truncating.",
            ),
            "rate": (
                429,
                "You are using a Trial key, which is limited to 20 API calls / minute. You can "
                "continue to use the Trial key for free or upgrade to a Production key.",
            ),
            "server": (500, "internal server error, this has been reported to our developers"),
        }
        status, text = kinds_c[kind]
        return status, {"id": "5c1e4a52-7d2b-4b8e-9f60-3f1d2a9c8b7e", "message": text}
    # ollama: no keys; plain {"error": "..."} bodies
    kinds_o = {
        "auth": (401, "unauthorized"),
        "forbidden": (403, "forbidden"),
        "not_found": (404, f'model "{model}" not found, try pulling it first'),
        "context": (400, "the input length exceeds the context length"),
        "rate": (429, "too many requests"),
        "server": (500, "llama runner process has terminated"),
    }
    status, message = kinds_o[kind]
    return status, {"error": message}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # batch tests open dozens of connections at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that gave up (a timeout test) closes the socket under us: not an error
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class WireServer:
    """Start with ``with WireServer() as server:``; ``server.url`` is its base URL."""

    FAULTS = ("rate", "server", "timeout", "malformed", "drop")

    def __init__(self, delay: float = 0.0, fault_rate: float = 0.0, seed: int = 7) -> None:
        self.requests: list[Recorded] = []
        # chat requests that get a random fault (429 with Retry-After, 500, a reply slower
        # than the client's timeout, a malformed JSON body, a dropped connection)
        self.fault_rate = fault_rate
        self.timeout_sleep = 2.0
        self._rng = random.Random(seed)
        self.in_flight = 0  # chat requests being answered right now
        self.max_in_flight = 0
        # client port -> monotonic time its chat request was recorded (body and all), while it
        # is being answered (a test can tell whose requests are in flight from a process's ports)
        self.answering: dict[int, float] = {}
        # chat requests after the first ``hold_after`` wait (≤ 60 s) until ``released`` is set:
        # a test that kills a client mid-run knows the run cannot have finished first
        self.hold_after: int | None = None
        self.released = threading.Event()
        # a str is answered as text; a ToolCall as the protocol's own tool call
        self.replies: deque[str | ToolCall] = deque()
        self.failures: deque[tuple[str, str | None]] = deque()
        self.delay = delay
        self.first_token_delay = 0.0  # seconds before the first streamed token
        self.token_delay = 0.0  # seconds between streamed tokens
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> WireServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail_next(self, kind: str, retry_after: str | None = None) -> None:
        """The next request gets this error: auth, forbidden, not_found, context, rate, server.

        ``retry_after`` adds a Retry-After header, as rate limiters send.
        """
        self.failures.append((kind, retry_after))

    def _reply_for(self, last_user: str) -> str | ToolCall:
        with self._lock:
            return self.replies.popleft() if self.replies else f"eco: {last_user}"

    # -- request handling -------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer()
                finally:
                    with server._lock:
                        server.in_flight -= 1
                        server.answering.pop(self.client_address[1], None)

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                body = json.loads(raw or b"{}")
                path = self.path.split("?")[0]
                query = self.path.partition("?")[2]
                headers = {k.lower(): v for k, v in self.headers.items()}
                if path.endswith("/embeddings") or path == "/api/embed":
                    with server._lock:
                        kind = "openai" if path.endswith("/embeddings") else "ollama"
                        server.requests.append(Recorded(kind, path, headers, body, False))
                    texts = body.get("input")
                    texts = [texts] if isinstance(texts, str) else texts
                    vectors = [_vector(t) for t in texts]
                    if kind == "openai":
                        data = [
                            {"object": "embedding", "index": i, "embedding": v}
                            for i, v in enumerate(vectors)
                        ]
                        self._send_json(
                            200,
                            {
                                "object": "list",
                                "data": data,
                                "model": body["model"],
                                "usage": {"prompt_tokens": 1, "total_tokens": 1},
                            },
                        )
                    else:
                        self._send_json(200, {"model": body["model"], "embeddings": vectors})
                    return
                if _GEMINI_EMBED.search(path):
                    with server._lock:
                        server.requests.append(Recorded("gemini", path, headers, body, False))
                    # batchEmbedContents: {"requests": [{"content": {"parts": [...]}}]}
                    requests = body.get("requests") or [body]
                    texts = [" ".join(p["text"] for p in r["content"]["parts"]) for r in requests]
                    self._send_json(200, {"embeddings": [{"values": _vector(t)} for t in texts]})
                    return
                if path.startswith(MISTRAL_PREFIX + "/") and path.endswith("/chat/completions"):
                    path = path.removeprefix(MISTRAL_PREFIX)  # as Mistral's server sees it
                    provider, stream, model = "mistral", bool(body.get("stream")), body["model"]
                elif path.endswith("/chat/completions"):
                    provider, stream, model = "openai", bool(body.get("stream")), body["model"]
                elif path.endswith("/v1/messages"):
                    provider, stream, model = "anthropic", bool(body.get("stream")), body["model"]
                elif match := _GEMINI.search(path):
                    model = match["model"]
                    provider, stream = "gemini", match["method"] == "streamGenerateContent"
                elif path == "/api/chat":
                    provider, model = "ollama", body["model"]
                    stream = body.get("stream", True)
                elif path == "/v2/chat":
                    provider, stream, model = "cohere", bool(body.get("stream")), body["model"]
                else:
                    self._send_json(404, {"error": f"no route {path}"})
                    return
                with server._lock:
                    failure = server.failures.popleft() if server.failures else None
                    fault = None
                    if failure is None and server._rng.random() < server.fault_rate:
                        fault = server._rng.choice(server.FAULTS)
                    server.requests.append(
                        Recorded(provider, path, headers, body, stream, fault=fault)
                    )
                    # recorded whole (a client killed after its headers sent no body)
                    server.answering[self.client_address[1]] = time.monotonic()
                    held = (
                        server.hold_after is not None and len(server.requests) > server.hold_after
                    )
                if held:
                    server.released.wait(60)
                if server.delay:
                    time.sleep(server.delay)
                if fault == "drop":  # close the connection without a word
                    self.close_connection = True
                    return
                if fault == "malformed":
                    raw = b'{"id": "chatcmpl-1", "choices": [{"index": 0, "mess'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                if fault == "timeout":
                    time.sleep(server.timeout_sleep)  # the client has given up by now
                if fault in ("rate", "server"):
                    failure = (fault, "0" if fault == "rate" else None)
                if failure:
                    status, payload = _error_body(provider, failure[0], model)
                    extra = {"Retry-After": failure[1]} if failure[1] is not None else {}
                    self._send_json(status, payload, extra)
                    return
                reply = server._reply_for(_last_user_text(provider, body))
                if isinstance(reply, ToolCall):
                    getattr(self, f"_{provider}_tool_call")(reply, stream, model)
                    return
                getattr(self, f"_{provider}")(body, reply, stream, model, query)

            # -- tool calls, in each protocol's shape (whole, in one message or event) ------
            def _openai_tool_call(self, call: ToolCall, stream: bool, model: str) -> None:
                assert not stream, "tool steps call the model without streaming"
                function = {"name": call.name, "arguments": json.dumps(call.args)}
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": call.id, "type": "function", "function": function}],
                }
                self._send_json(
                    200,
                    {
                        "id": "chatcmpl-2",
                        "object": "chat.completion",
                        "created": 1,
                        "model": model,
                        "choices": [
                            {"index": 0, "finish_reason": "tool_calls", "message": message}
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    },
                )

            def _anthropic_tool_call(self, call: ToolCall, stream: bool, model: str) -> None:
                assert not stream, "tool steps call the model without streaming"
                block = {"type": "tool_use", "id": call.id, "name": call.name, "input": call.args}
                self._send_json(
                    200,
                    {
                        "id": "msg_2",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [block],
                        "stop_reason": "tool_use",
                        "stop_sequence": None,
                        "usage": {"input_tokens": 10, "output_tokens": 5},
                    },
                )

            def _gemini_tool_call(self, call: ToolCall, stream: bool, model: str) -> None:
                assert not stream, "tool steps call the model without streaming"
                part = {"functionCall": {"name": call.name, "args": call.args}}
                self._send_json(
                    200,
                    {
                        "candidates": [
                            {
                                "content": {"parts": [part], "role": "model"},
                                "finishReason": "STOP",
                                "index": 0,
                            }
                        ],
                        "usageMetadata": {
                            "promptTokenCount": 10,
                            "candidatesTokenCount": 5,
                            "totalTokenCount": 15,
                        },
                        "modelVersion": model,
                        "responseId": "r2",
                    },
                )

            def _ollama_tool_call(self, call: ToolCall, stream: bool, model: str) -> None:
                message = {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": call.name, "arguments": call.args}}],
                }
                done = {
                    "model": model,
                    "created_at": "2026-01-01T00:00:00Z",
                    "message": message,
                    "done": True,
                    "done_reason": "stop",
                    "eval_count": 5,
                    "prompt_eval_count": 10,
                }
                if not stream:
                    self._send_json(200, done)
                    return
                # Ollama streams the call in one line, then an empty closing line
                self._start_stream("application/x-ndjson")
                self._chunk(json.dumps({**done, "done": False, "done_reason": None}) + "\n")
                closing = {**done, "message": {"role": "assistant", "content": ""}}
                self._chunk(json.dumps(closing) + "\n")
                self._end_stream()

            def _mistral_tool_call(self, call: ToolCall, stream: bool, model: str) -> None:
                # Mistral sends the call whole, its arguments as a JSON string, with an id of
                # nine letters and digits (its API refuses any other id in the follow-up)
                tool_call = {
                    "id": mistral_tool_call_id(call.id),
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.args)},
                    "index": 0,
                }
                usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                base = {"id": "cmpl-2", "created": 1, "model": model}
                if not stream:
                    message = {"role": "assistant", "content": "", "tool_calls": [tool_call]}
                    choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
                    self._send_json(
                        200,
                        {**base, "object": "chat.completion", "choices": [choice], "usage": usage},
                    )
                    return
                # streamed, the call comes in one chunk, then the usage with the finish reason
                self._start_stream("text/event-stream")
                chunk = {**base, "object": "chat.completion.chunk"}
                delta = {"role": "assistant", "content": "", "tool_calls": [tool_call]}
                first = {"index": 0, "delta": delta, "finish_reason": None}
                self._chunk(f"data: {json.dumps({**chunk, 'choices': [first]})}\n\n")
                last = {"index": 0, "delta": {"content": ""}, "finish_reason": "tool_calls"}
                self._chunk(f"data: {json.dumps({**chunk, 'choices': [last], 'usage': usage})}\n\n")
                self._chunk("data: [DONE]\n\n")
                self._end_stream()

            def _cohere_tool_call(self, call: ToolCall, stream: bool, model: str) -> None:
                # v2 chat: a tool plan (the model's reasoning) and the calls, arguments as a
                # JSON string; finish_reason TOOL_CALL
                plan = f"I will use the {call.name} tool."
                arguments = json.dumps(call.args)
                usage = _cohere_usage(5)
                if not stream:
                    function = {"name": call.name, "arguments": arguments}
                    message = {
                        "role": "assistant",
                        "tool_plan": plan,
                        "tool_calls": [{"id": call.id, "type": "function", "function": function}],
                    }
                    self._send_json(
                        200,
                        {
                            "id": "c2",
                            "message": message,
                            "finish_reason": "TOOL_CALL",
                            "usage": usage,
                        },
                    )
                    return
                # streamed: the plan in deltas, then the call: its name first, then its
                # arguments in pieces, then its end
                self._start_stream("text/event-stream")
                self._cohere_event("message-start", {"id": "c2", "delta": _cohere_start()})
                for token in self._tokens(plan):
                    delta = {"message": {"tool_plan": token}}
                    self._cohere_event("tool-plan-delta", {"delta": delta})
                start = {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                delta = {"message": {"tool_calls": start}}
                self._cohere_event("tool-call-start", {"index": 0, "delta": delta})
                middle = len(arguments) // 2
                for piece in (arguments[:middle], arguments[middle:]):
                    delta = {"message": {"tool_calls": {"function": {"arguments": piece}}}}
                    self._cohere_event("tool-call-delta", {"index": 0, "delta": delta})
                self._cohere_event("tool-call-end", {"index": 0})
                end = {"finish_reason": "TOOL_CALL", "usage": usage}
                self._cohere_event("message-end", {"delta": end})
                self._end_stream()

            # -- plumbing ------------------------------------------------------------------
            def _send_json(
                self, status: int, payload: Any, headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _start_stream(self, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()

            def _chunk(self, data: str) -> None:
                raw = data.encode()
                self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
                self.wfile.flush()

            def _end_stream(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _tokens(self, text: str) -> Iterator[str]:
                tokens = re.findall(r"\S+\s*|\s+", text) or [""]
                if server.first_token_delay:
                    time.sleep(server.first_token_delay)
                for n, token in enumerate(tokens):
                    if n and server.token_delay:
                        time.sleep(server.token_delay)
                    yield token

            # -- OpenAI: chat completions -------------------------------------------------
            def _openai(self, body: Any, text: str, stream: bool, model: str, q: str) -> None:
                usage = {
                    "prompt_tokens": 10,
                    "completion_tokens": len(text.split()),
                    "total_tokens": 10 + len(text.split()),
                }
                if not stream:
                    self._send_json(
                        200,
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion",
                            "created": 1,
                            "model": model,
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "logprobs": None,
                                    "message": {"role": "assistant", "content": text},
                                }
                            ],
                            "usage": usage,
                        },
                    )
                    return
                self._start_stream("text/event-stream")
                base = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": model,
                }
                first = {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ],
                }
                self._chunk(f"data: {json.dumps(first)}\n\n")
                for token in self._tokens(text):
                    chunk = {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {"content": token}, "finish_reason": None}
                        ],
                    }
                    self._chunk(f"data: {json.dumps(chunk)}\n\n")
                last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                self._chunk(f"data: {json.dumps(last)}\n\n")
                if (body.get("stream_options") or {}).get("include_usage"):
                    self._chunk(f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n")
                self._chunk("data: [DONE]\n\n")
                self._end_stream()

            # -- Anthropic: messages --------------------------------------------------------
            def _anthropic(self, body: Any, text: str, stream: bool, model: str, q: str) -> None:
                usage = {"input_tokens": 10, "output_tokens": len(text.split())}
                message = {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                }
                if not stream:
                    self._send_json(
                        200,
                        {**message, "content": [{"type": "text", "text": text}], "usage": usage},
                    )
                    return
                self._start_stream("text/event-stream")

                def event(name: str, data: dict[str, Any]) -> None:
                    self._chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n")

                event(
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            **message,
                            "content": [],
                            "stop_reason": None,
                            "usage": {"input_tokens": 10, "output_tokens": 1},
                        },
                    },
                )
                event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                event("ping", {"type": "ping"})
                for token in self._tokens(text):
                    event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": token},
                        },
                    )
                event("content_block_stop", {"type": "content_block_stop", "index": 0})
                # the API's message_delta usage is cumulative, input tokens included (and
                # langchain-anthropic reads a streamed reply's usage from it alone)
                event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": usage,
                    },
                )
                event("message_stop", {"type": "message_stop"})
                self._end_stream()

            # -- Gemini: generateContent / streamGenerateContent ----------------------------
            def _gemini(self, body: Any, text: str, stream: bool, model: str, q: str) -> None:
                def response(part: str, finish: str | None) -> dict[str, Any]:
                    candidate: dict[str, Any] = {
                        "content": {"parts": [{"text": part}], "role": "model"},
                        "index": 0,
                    }
                    if finish:
                        candidate["finishReason"] = finish
                    return {
                        "candidates": [candidate],
                        "usageMetadata": {
                            "promptTokenCount": 10,
                            "candidatesTokenCount": len(text.split()),
                            "totalTokenCount": 10 + len(text.split()),
                        },
                        "modelVersion": model,
                        "responseId": "r1",
                    }

                if not stream:
                    self._send_json(200, response(text, "STOP"))
                    return
                self._start_stream("text/event-stream")
                tokens = list(self._tokens(text))
                for n, token in enumerate(tokens):
                    finish = "STOP" if n == len(tokens) - 1 else None
                    self._chunk(f"data: {json.dumps(response(token, finish))}\r\n\r\n")
                self._end_stream()

            # -- Ollama: /api/chat ------------------------------------------------------------
            def _ollama(self, body: Any, text: str, stream: bool, model: str, q: str) -> None:
                done = {
                    "model": model,
                    "created_at": "2026-01-01T00:00:00Z",
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "stop",
                    "total_duration": 1000,
                    "load_duration": 10,
                    "prompt_eval_count": 10,
                    "prompt_eval_duration": 100,
                    "eval_count": len(text.split()),
                    "eval_duration": 500,
                }
                if not stream:
                    self._send_json(
                        200, {**done, "message": {"role": "assistant", "content": text}}
                    )
                    return
                self._start_stream("application/x-ndjson")
                for token in self._tokens(text):
                    line = {
                        "model": model,
                        "created_at": "2026-01-01T00:00:00Z",
                        "message": {"role": "assistant", "content": token},
                        "done": False,
                    }
                    self._chunk(json.dumps(line) + "\n")
                self._chunk(json.dumps(done) + "\n")
                self._end_stream()

            # -- Mistral: chat completions ----------------------------------------------------
            def _mistral(self, body: Any, text: str, stream: bool, model: str, q: str) -> None:
                words = len(text.split())
                usage = {
                    "prompt_tokens": 10,
                    "completion_tokens": words,
                    "total_tokens": 10 + words,
                }
                base = {"id": "cmpl-1", "created": 1, "model": model}
                if not stream:
                    message = {"role": "assistant", "content": text, "tool_calls": None}
                    choice = {"index": 0, "message": message, "finish_reason": "stop"}
                    self._send_json(
                        200,
                        {**base, "object": "chat.completion", "choices": [choice], "usage": usage},
                    )
                    return
                # SSE: a first chunk with the role, one per token, and a last one with the finish
                # reason and the usage together (Mistral has no separate usage chunk), then
                # [DONE]
                self._start_stream("text/event-stream")
                chunk = {**base, "object": "chat.completion.chunk"}

                def send(delta: dict[str, Any], finish: str | None, **extra: Any) -> None:
                    choice = {"index": 0, "delta": delta, "finish_reason": finish}
                    self._chunk(f"data: {json.dumps({**chunk, 'choices': [choice], **extra})}\n\n")

                send({"role": "assistant", "content": ""}, None)
                for token in self._tokens(text):
                    send({"content": token}, None)
                send({"content": ""}, "stop", usage=usage)
                self._chunk("data: [DONE]\n\n")
                self._end_stream()

            # -- Cohere: v2 chat ------------------------------------------------------------
            def _cohere(self, body: Any, text: str, stream: bool, model: str, q: str) -> None:
                usage = _cohere_usage(len(text.split()))
                if not stream:
                    message = {"role": "assistant", "content": [{"type": "text", "text": text}]}
                    self._send_json(
                        200,
                        {
                            "id": "c1",
                            "message": message,
                            "finish_reason": "COMPLETE",
                            "usage": usage,
                        },
                    )
                    return
                self._start_stream("text/event-stream")
                self._cohere_event("message-start", {"id": "c1", "delta": _cohere_start()})
                empty = {"message": {"content": {"type": "text", "text": ""}}}
                self._cohere_event("content-start", {"index": 0, "delta": empty})
                for token in self._tokens(text):
                    delta = {"message": {"content": {"text": token}}}
                    self._cohere_event("content-delta", {"index": 0, "delta": delta})
                self._cohere_event("content-end", {"index": 0})
                end = {"finish_reason": "COMPLETE", "usage": usage}
                self._cohere_event("message-end", {"delta": end})
                self._end_stream()

            def _cohere_event(self, kind: str, data: dict[str, Any]) -> None:
                # each event names its type twice: the SSE event line and the JSON's "type"
                payload = json.dumps({"type": kind, **data})
                self._chunk(f"event: {kind}\ndata: {payload}\n\n")

        return Handler


def mistral_tool_call_id(call_id: str) -> str:
    """A tool call id as Mistral writes them: nine letters and digits."""
    return re.sub(r"[^A-Za-z0-9]", "", call_id)[:9].ljust(9, "0")


def _cohere_usage(output_tokens: int) -> dict[str, Any]:
    """Cohere's usage: ``tokens`` the model read and wrote, ``billed_units`` what is charged
    (fewer input tokens: the prompt template's own are not billed)."""
    return {
        "billed_units": {"input_tokens": 8, "output_tokens": output_tokens},
        "tokens": {"input_tokens": 10, "output_tokens": output_tokens},
    }


def _cohere_start() -> dict[str, Any]:
    """The ``delta`` of Cohere's message-start event: an empty assistant message."""
    return {
        "message": {
            "role": "assistant",
            "content": [],
            "tool_plan": "",
            "tool_calls": [],
            "citations": [],
        }
    }


def _vector(text: Any) -> list[float]:
    """A deterministic stand-in embedding: letter counts, normalized."""
    if isinstance(text, list):  # OpenAI may send token ids
        text = " ".join(map(str, text))
    counts = [float(str(text).lower().count(c)) for c in "abcdefghijklmnopqrstuvwxyz"]
    norm = sum(c * c for c in counts) ** 0.5 or 1.0
    return [c / norm for c in counts]


def _last_user_text(provider: str, body: dict[str, Any]) -> str:
    if provider == "gemini":
        turns = [c for c in body.get("contents", []) if c.get("role") == "user"]
        parts = turns[-1]["parts"] if turns else []
        return "".join(p.get("text", "") for p in parts)
    messages = [m for m in body.get("messages", []) if m.get("role") == "user"]
    if not messages:
        return ""
    content = messages[-1]["content"]
    if isinstance(content, list):
        return "".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content)
