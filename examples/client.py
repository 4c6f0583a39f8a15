#!/usr/bin/env python3
"""Create a taskhost task, follow it to the end and print its result.

Standard library only. Usage:

    python3 examples/client.py                       # testkit sleep on http://127.0.0.1:8080
    python3 examples/client.py --plugin testkit --type echo --input '{"hello": "world"}'
    TASKHOST_URL=http://127.0.0.1:9000 TASKHOST_TOKEN=... python3 examples/client.py

Progress is printed as it changes (by polling the task's events after the last seen seq);
the exit status is 0 when the task completed, 1 when it failed or was cancelled.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


def call(base, method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        problem = json.loads(error.read() or b"{}").get("error", {})
        sys.exit(f"{method} {path}: {error.code} {problem.get('code')}: {problem.get('message')}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TASKHOST_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("TASKHOST_TOKEN"))
    parser.add_argument("--plugin", default="testkit")
    parser.add_argument("--type", default="sleep")
    parser.add_argument("--input", default='{"ms": 2000, "steps": 5}', help="task input as JSON")
    parser.add_argument("--label", action="append", default=[], help="key=value, repeatable")
    args = parser.parse_args()

    labels = dict(label.split("=", 1) for label in args.label)
    task = call(args.url, "POST", "/api/v1/tasks", {
        "plugin": args.plugin,
        "type": args.type,
        "input": json.loads(args.input),
        "labels": labels,
    }, args.token)
    task_id = task["id"]
    print(f"created {task_id} ({task['status']})")

    after_seq = 0
    while True:
        page = call(args.url, "GET", f"/api/v1/tasks/{task_id}/events?after_seq={after_seq}&limit=100",
                    token=args.token)
        for event in page["data"]:
            after_seq = event["seq"]
            data = event["data"]
            if event["type"] == "progress":
                done, total = data.get("processed"), data.get("total")
                step = data.get("current_step") or ""
                print(f"  progress {done}/{total} {step}".rstrip())
            elif event["type"] == "log":
                print(f"  log [{data.get('level')}] {data.get('message')}")
            else:
                print(f"  {event['type']}")
        task = call(args.url, "GET", f"/api/v1/tasks/{task_id}", token=args.token)
        if task["status"] in ("completed", "failed", "cancelled") and not page["meta"]["has_more"]:
            break
        time.sleep(0.2)

    if task["status"] == "completed":
        print(json.dumps(task["result"], indent=2))
        return 0
    print(f"{task['status']}: {json.dumps(task['error'])}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
