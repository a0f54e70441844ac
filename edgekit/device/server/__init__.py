"""The device HTTP server: an OpenAI-shaped API over Starlette (run by uvicorn), in parts with one
job each, wired by `create_app` (app.py):

  parse.py      request parsing/validation: JSON bodies -> CompletionRequest / EmbeddingsRequest
  admission.py  auth, readiness, task, the bounded queue (401 / 503 with Retry-After / 400)
  session.py    one completion on the model in a worker thread: tokens -> streamed pieces, stops
  metering.py   energy and thermal figures per request; the metrics + request-log account
  responses.py  OpenAI JSON bodies, SSE chunks, usage, error shapes
  routes.py     the Starlette handlers calling the above

One model session: requests take turns (one slot), or with serve --parallel N up to N generate at
once, their decode steps batched (edgekit.device.batching); at most `max_queue` wait beyond the
slots, more get 503 with Retry-After. Generation runs in a worker thread so the event loop keeps answering /health; a
client that disconnects mid-stream stops its generation at the next token. Optional bearer-token
auth (all routes but /health). Every request is logged as one JSONL line and counted in /metrics.
Bounded-queue, auth, channel and Prometheus pieces live in edgekit.device.serving.
May import: stdlib, edgekit.core, edgekit.device, starlette, numpy, prometheus_client.
"""

from edgekit.device.server.app import create_app

__all__ = ["create_app"]
