#!/usr/bin/env python3
"""A Tasker remote worker using only the Python standard library.

It claims steps of one namespace over HTTP, runs the handlers it knows, heartbeats while a
step runs, and reports each outcome. Steps whose handler the server runs itself never reach
it; steps with other handlers wait in the namespace's queue for a worker like this one.

    python3 examples/workers/python_worker.py --url http://127.0.0.1:8080 --namespace shop

Environment: TASKER_API_TOKEN (bearer token, when the server requires one).
"""

import argparse
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
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


def heartbeat_until(api, step, lease_ms, done):
    """Extends the lease every third of it until `done` is set."""
    while not done.wait(lease_ms / 3000):
        status, _ = api.post(f"/v1/steps/{step['step_id']}/heartbeat",
                             {"lease_token": step["lease_token"], "lease_ms": lease_ms})
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
    status, answer = api.post(f"/v1/steps/{step['step_id']}/{path}", body)
    outcome = "done" if status == 200 else f"refused ({status}: {answer.get('error', {}).get('message')})"
    print(f"step {step['name']} (attempt {step['attempt']}): {path} {outcome}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TASKER_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--max", type=int, default=10, help="steps per claim")
    parser.add_argument("--lease-ms", type=int, default=30000)
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between empty claims")
    parser.add_argument("--exit-when-idle", type=float, default=None,
                        help="stop after this many seconds without work (default: run forever)")
    args = parser.parse_args()

    api = Api(args.url, os.environ.get("TASKER_API_TOKEN"))
    worker_id = f"python-{uuid.uuid4().hex[:8]}"
    idle_since = time.monotonic()
    print(f"{worker_id}: serving {sorted(HANDLERS)} of {args.namespace} at {args.url}", flush=True)
    while True:
        status, answer = api.post("/v1/workers/claim", {
            "namespace": args.namespace, "worker_id": worker_id, "max": args.max,
            "lease_ms": args.lease_ms, "handlers": sorted(HANDLERS),
        })
        if status != 200:
            print(f"claim failed ({status}): {answer}", file=sys.stderr, flush=True)
            time.sleep(1)
            continue
        steps = answer["steps"]
        for step in steps:
            run_step(api, step, args.lease_ms)
        if steps:
            idle_since = time.monotonic()
        elif args.exit_when_idle is not None and time.monotonic() - idle_since > args.exit_when_idle:
            return 0
        else:
            time.sleep(args.poll)


if __name__ == "__main__":
    sys.exit(main())
