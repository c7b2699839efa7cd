#!/usr/bin/env python3
"""A Tasker remote worker using only the Python standard library.

It claims steps of one namespace over HTTP, runs the handlers it knows, heartbeats while a
step runs, and reports each outcome. Steps whose handler the server runs itself never reach
it; steps with other handlers wait in the namespace's queue for a worker like this one.

    python3 examples/workers/python_worker.py --url http://127.0.0.1:8080 --namespace shop

When the server cannot be reached, it prints one line to stderr per try and tries again after a
pause that doubles from 0.5 s to 30 s. With --exit-when-idle, time without reaching the server
counts as idle: it then exits 1 instead of 0.

Environment: TASKER_API_TOKEN (bearer token, when the server requires one).
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid


# --- handlers: name -> function(context, config, parents) -> output (JSON-serializable) -----

def greet(context, config, parents):
    """Greets `context.name` (or `config.name`)."""
    name = context.get("name") or config.get("name") or "world"
    return {"greeting": f"hello {name}", "from": "python"}


def total(context, config, parents):
    """Sums `amount` over the parents' outputs and `context.amounts`."""
    amounts = list(context.get("amounts", []))
    amounts += [p.get("amount", 0) for p in parents.values() if isinstance(p, dict)]
    return {"total": sum(amounts)}


class RetryableError(Exception):
    """Raised by a handler for a failure another attempt may fix."""


HANDLERS = {"py_greet": greet, "py_total": total}


# --- the protocol ---------------------------------------------------------------------------

class Unreachable(Exception):
    """The server did not answer: refused, reset, timed out, or not HTTP."""


def reason_of(error):
    """A short reason, such as `Connection refused`, for a failed connection."""
    reason = getattr(error, "reason", error)  # URLError wraps the socket's error
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def decode(raw):
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        return {"error": {"message": raw[:200].decode(errors="replace")}}


class Backoff:
    """Pauses between tries: 0.5 s doubling to 30 s; reset after a success."""

    def __init__(self, first=0.5, cap=30.0):
        self.first, self.cap, self.delay = first, cap, first

    def next(self):
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self):
        self.delay = self.first


class Api:
    def __init__(self, url, token):
        self.url = url.rstrip("/")
        self.token = token

    def post(self, path, body):
        data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, decode(response.read())
        except urllib.error.HTTPError as e:
            return e.code, decode(e.read())
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise Unreachable(reason_of(e)) from None


def message_of(answer):
    error = answer.get("error") if isinstance(answer, dict) else None
    return error.get("message") if isinstance(error, dict) else answer


def heartbeat_until(api, step, lease_ms, done):
    """Extends the lease every third of it until `done` is set."""
    while not done.wait(lease_ms / 3000):
        try:
            status, _ = api.post(f"/v1/steps/{step['step_id']}/heartbeat",
                                 {"lease_token": step["lease_token"], "lease_ms": lease_ms})
        except Unreachable:
            continue  # the next beat may get through; the result report says what happened
        if status == 409:
            return  # lost the lease: the server will refuse our result too


def run_step(api, step, lease_ms):
    handler = HANDLERS[step["handler"]]
    done = threading.Event()
    beat = threading.Thread(target=heartbeat_until, args=(api, step, lease_ms, done), daemon=True)
    beat.start()
    try:
        output = handler(step["context"], step["config"] or {}, step["parents"])
        path, body = "complete", {"lease_token": step["lease_token"], "output": output}
    except RetryableError as e:
        path, body = "fail", {"lease_token": step["lease_token"], "error": str(e), "retryable": True}
    except Exception as e:  # noqa: BLE001 - any other handler error is permanent
        path, body = "fail", {"lease_token": step["lease_token"], "error": repr(e), "retryable": False}
    finally:
        done.set()
    # Report until the lease would have run out: after that the server refuses the result.
    deadline = time.monotonic() + lease_ms / 1000
    backoff = Backoff()
    while True:
        try:
            status, answer = api.post(f"/v1/steps/{step['step_id']}/{path}", body)
        except Unreachable as e:
            delay = min(backoff.next(), deadline - time.monotonic())
            if delay <= 0:
                outcome = f"not reported (server unreachable: {e})"
                break
            print(f"worker: server {api.url} unreachable ({e}); retrying the result of step "
                  f"{step['name']} in {delay:.1f}s", file=sys.stderr, flush=True)
            time.sleep(delay)
            continue
        outcome = "done" if status == 200 else f"refused ({status}: {message_of(answer)})"
        break
    print(f"step {step['name']} (attempt {step['attempt']}): {path} {outcome}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TASKER_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--max", type=int, default=10, help="steps per claim")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="claimed steps run at once (each on a thread of its own)")
    parser.add_argument("--lease-ms", type=int, default=30000)
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between empty claims")
    parser.add_argument("--exit-when-idle", type=float, default=None,
                        help="stop after this many seconds without work (default: run forever); "
                             "exit 1 if the server could not be reached then")
    args = parser.parse_args()
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must start with http:// or https://, not {args.url!r}")

    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, not {args.concurrency}")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency)
    api = Api(args.url, os.environ.get("TASKER_API_TOKEN"))
    worker_id = f"python-{uuid.uuid4().hex[:8]}"
    idle_since = time.monotonic()
    backoff = Backoff()
    print(f"{worker_id}: serving {sorted(HANDLERS)} of {args.namespace} at {args.url}", flush=True)
    while True:
        try:
            status, answer = api.post("/v1/workers/claim", {
                "namespace": args.namespace, "worker_id": worker_id, "max": args.max,
                "lease_ms": args.lease_ms, "handlers": sorted(HANDLERS),
            })
        except Unreachable as e:
            problem = f"server {api.url} unreachable ({e})"
        else:
            if status == 200:
                backoff.reset()
                steps = answer.get("steps", [])
                # A claim's steps run `--concurrency` at a time; the next claim waits for all.
                list(pool.map(lambda step: run_step(api, step, args.lease_ms), steps))
                if steps:
                    idle_since = time.monotonic()
                elif args.exit_when_idle is not None and time.monotonic() - idle_since > args.exit_when_idle:
                    return 0
                else:
                    time.sleep(args.poll)
                continue
            problem = f"claim refused by {api.url} ({status}: {message_of(answer)})"
            if 400 <= status < 500 and status not in (408, 429):
                print(f"worker: {problem}; not retrying", file=sys.stderr, flush=True)
                return 1
        # No answer to the claim: try again later, unless it is time to stop.
        idle = time.monotonic() - idle_since
        delay = backoff.next()
        if args.exit_when_idle is not None:
            if idle >= args.exit_when_idle:
                print(f"worker: {problem}; giving up after {idle:.1f}s without work",
                      file=sys.stderr, flush=True)
                return 1
            delay = min(delay, args.exit_when_idle - idle)
        print(f"worker: {problem}; retrying in {delay:.1f}s", file=sys.stderr, flush=True)
        time.sleep(delay)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
