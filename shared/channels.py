"""Every Redis key, channel and queue name herd uses, with its lifetime."""

from __future__ import annotations

import os
import re

PREFIX_ENV = "HERD_REDIS_PREFIX"


def deployment_prefix(value: str) -> str:
    """A valid HERD_REDIS_PREFIX: letters, digits and `_.-` (no `:` and no glob characters), at most 64."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise ValueError(f"{PREFIX_ENV}={value!r}: use letters, digits and _.- (at most 64, no ':' or '*')")
    return value


# Every name below starts with it. Redis databases do not separate pub/sub channels, so several herds on one Redis
# each set their own HERD_REDIS_PREFIX (the API, the workers and the chart's probe of one deployment the same).
# Read once, at import, from the environment; arq's own keys (arq:job:<id>, ...) are named by request ids, which are
# unique, so they need none.
PREFIX = deployment_prefix(os.environ.get(PREFIX_ENV) or "herd")


def queue(model: str) -> str:
    """The ledger of one model's jobs, waiting or running (a sorted set by enqueue time, in arq's format): the API's
    admission bound, /v1/queue and KEDA count it; the job itself waits on a worker's queue or the overflow."""
    return f"{PREFIX}:queue:{model}"


def events(request_id: str) -> str:
    """Pub/sub channel carrying one request's StreamEvents from worker to API."""
    return f"{PREFIX}:events:{request_id}"


def request(request_id: str) -> str:
    """The encoded GenerationRequest, so the arq job (and its log line) carries only the id. TTL: request_ttl_s."""
    return f"{PREFIX}:request:{request_id}"


def started(request_id: str) -> str:
    """Set NX by the worker that starts a request: a re-delivered job sees it and does not run twice."""
    return f"{PREFIX}:started:{request_id}"


def cancelled(request_id: str) -> str:
    """Set by the API when the client went away: a job not yet started skips the request. TTL: request_ttl_s."""
    return f"{PREFIX}:cancelled:{request_id}"


def api_control(api_id: str) -> str:
    """Pub/sub channel an API process subscribes to first, so its one pub/sub connection is up before any request."""
    return f"{PREFIX}:api:{api_id}"


# Broadcast channel: the API publishes request ids whose client disconnected; every worker listens.
CANCEL_CHANNEL = f"{PREFIX}:cancel"


def worker_queue(model: str, worker_id: str) -> str:
    """arq queue of one worker: the API puts each interactive job on the queue of the worker it chose (README,
    Scale-out), so no other worker reads or races for it. queue(model) stays the ledger of the model's jobs."""
    return f"{PREFIX}:queue:{model}:w:{worker_id}"


def announce(worker_id: str) -> str:
    """Pub/sub channel of one worker: the API publishes each job id it put on the worker's queue (to start it now)."""
    return f"{PREFIX}:announce:w:{worker_id}"


def overflow(model: str) -> str:
    """arq-format sorted set of a model's jobs that no worker had a free slot for when they came (or that a full,
    draining or dead worker gave back): the first worker with a free slot moves them to its own queue."""
    return f"{PREFIX}:overflow:{model}"


def affinity(model: str, digest: str) -> str:
    """The worker that last served a prompt prefix (api/affinity.py makes the digests). TTL: AFFINITY_TTL_S."""
    return f"{PREFIX}:affinity:{model}:{digest}"


AFFINITY_TTL_S = 600  # about as long as a worker's prefix cache keeps an idle conversation


def stats(request_id: str) -> str:
    """Per-request outcome the worker writes at the end (tokens generated, finish reason). TTL: request_ttl_s."""
    return f"{PREFIX}:stats:{request_id}"


def worker(worker_id: str) -> str:
    """A worker's heartbeat (models, slots, counters). TTL: heartbeat_ttl_s: gone means the worker is dead."""
    return f"{PREFIX}:worker:{worker_id}"


WORKER_PATTERN = f"{PREFIX}:worker:*"

# The registry of live workers: a sorted set of worker ids scored by when each one's heartbeat expires (ms, Redis'
# clock), written with every heartbeat and pruned by score as it is read (herd/registry.py), so the fleet view and the
# probes read the fleet with one command and never SCAN the keyspace.
WORKERS = f"{PREFIX}:workers"


def batch_queue(model: str) -> str:
    """arq-format sorted set of one model's batch-line jobs. Low priority: a worker moves ids from here into its own
    queue (and the ledger, queue(model)) only while no interactive job waits and it has slots to spare (bus.py)."""
    return f"{PREFIX}:batchq:{model}"


def file(file_id: str) -> str:
    """A stored file's metadata (owner + FileObject, JSON); the bytes live in the files directory. No TTL."""
    return f"{PREFIX}:file:{file_id}"


def files_of(owner: str) -> str:
    """Sorted set of an owner's file ids, scored by creation time (ms): listing and its cursor. No TTL."""
    return f"{PREFIX}:files:{owner}"


def batch(batch_id: str) -> str:
    """A batch's record (owner + Batch object, JSON). Updated with WATCH/MULTI. No TTL."""
    return f"{PREFIX}:batch:{batch_id}"


def batches_of(owner: str) -> str:
    """Sorted set of an owner's batch ids, scored by creation time (ms). No TTL."""
    return f"{PREFIX}:batches:{owner}"


# Set of batch ids not yet in a final state: every API replica scans it for batches nobody drives.
BATCHES_ACTIVE = f"{PREFIX}:batches:active"


def batch_lease(batch_id: str) -> str:
    """Who drives a batch: an API process's token, PX batch_lease_ms, renewed while it lives."""
    return f"{PREFIX}:batch-lease:{batch_id}"


def batch_inflight(batch_id: str) -> str:
    """Hash line number -> request id of a batch's lines in flight, so a new driver can cancel an old one's."""
    return f"{PREFIX}:batch-inflight:{batch_id}"


def batch_idempotency(owner: str, key: str) -> str:
    """Idempotency-Key of a POST /v1/batches -> the batch it created. TTL: 24 h (the SDKs retry within minutes)."""
    return f"{PREFIX}:batch-idem:{owner}:{key}"


# arq keeps its own keys: arq:job:{id}, arq:in-progress:{id}, arq:result:{id}, arq:abort (see arq.constants).

# On-demand loading's keys (used only by herd.loading). A set of model names the API wants loaded (a request is
# waiting for a model no worker holds); the model manager in `herd serve` pops them and starts a worker for each.
# No TTL: a name is removed when it is popped.
LOAD_REQUESTS = f"{PREFIX}:loads"


def keep_alive(model: str) -> str:
    """Seconds an on-demand model stays loaded after its last request (the latest request's keep_alive; -1: forever)."""
    return f"{PREFIX}:keep_alive:{model}"


def load_failed(model: str) -> str:
    """Why an on-demand worker for `model` died (set by the model manager, TTL LOAD_FAILED_TTL_S): while it is set
    the API fails requests for the model at once instead of asking for a worker that would die again."""
    return f"{PREFIX}:load_failed:{model}"


LOAD_FAILED_TTL_S = 30


def expires(model: str) -> str:
    """When an on-demand model's worker will exit if no request comes (epoch seconds; -1: never). Written by it."""
    return f"{PREFIX}:expires:{model}"


def rate_limit(subject: str, kind: str) -> str:
    """A principal's token bucket (`kind`: requests or tokens): level and time. TTL: 2 minutes (full again by then)."""
    return f"{PREFIX}:ratelimit:{kind}:{subject}"


# The built-in OAuth2 issuer's signing keys (a hash: kid -> private JWK and the time its tokens are all expired), so
# every API replica signs and verifies with the same keys. Entries are dropped once no token they signed is valid.
ISSUER_KEYS = f"{PREFIX}:issuer:keys"


# ---- the Responses API (api/responses/): stored responses and durable event streams ------------------------------


def response(response_id: str) -> str:
    """A stored response (a hash: owner, status, the Response and its input items as JSON, the previous response's
    id, the id of its generation). TTL: responses_ttl."""
    return f"{PREFIX}:response:{response_id}"


def durable_events(request_id: str) -> str:
    """A Redis Stream of one durable request's StreamEvents (field `e`, msgpack), XADDed by the worker beside the
    pub/sub publish, so any API replica can replay and follow them. MAXLEN ~DURABLE_EVENTS_MAXLEN, TTL responses_ttl."""
    return f"{PREFIX}:durable:{request_id}"


DURABLE_EVENTS_MAXLEN = 100_000  # events (about one per generated token): more than any context holds


def ui_chat(owner: str, chat_id: str) -> str:
    """A useChat chat's answer that no client has read to its end yet (api/responses/ui_chats.py): the generation's
    id (its durable_events), the answer's message id, model, whether it has tools and their schemas. TTL
    responses_ttl."""
    return f"{PREFIX}:ui-chat:{owner}:{chat_id}"


def response_lease(response_id: str) -> str:
    """The API process running a background response: its token, PX a few heartbeats, renewed while it runs. Gone
    while the response is not finished: that process died, and a reader settles the response from its events."""
    return f"{PREFIX}:response-lease:{response_id}"
