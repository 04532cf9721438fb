"""An example GPU worker that follows the conventions gpu-agent relies on.

Copy it as a starting point; the job itself (run_job) is a stand-in. Standard
library only. See README.md beside this file for what each part is for.

  GET    /health  200 once ready (and while draining), 503 before
  POST   /drain   stop taking new jobs: 200 {"draining": true, "in_flight": N}
  GET    /drain   200 {"in_flight": N, "draining": bool}
  DELETE /drain   take jobs again: 200 {"draining": false, "in_flight": N}
  SIGTERM         stop taking jobs, finish the in-flight ones, exit 0

Environment: PORT (8080), BIND_ADDR (0.0.0.0), HUB_URL (unset: no hub),
HUB_TOKEN_FILE (optional), GPU_AGENT_ID and GPU_AGENT_DIGEST (set by
gpu-agent), MAX_PARALLEL (1), POLL_SECONDS (2).
"""

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("worker")

PORT = int(os.environ.get("PORT", "8080"))
BIND_ADDR = os.environ.get("BIND_ADDR", "0.0.0.0")
HUB_URL = os.environ.get("HUB_URL", "").rstrip("/")
HUB_TOKEN_FILE = os.environ.get("HUB_TOKEN_FILE", "")
# gpu-agent sets these two on every container it creates. The hub uses them
# to tell which host's worker this is and which image it runs; the agent asks
# the hub (GET /v1/workers/{agent_id}) after a swap and only commits the new
# digest once the hub sees this worker registered with it.
AGENT_ID = os.environ.get("GPU_AGENT_ID", "")
DIGEST = os.environ.get("GPU_AGENT_DIGEST", "")
MAX_PARALLEL = int(os.environ.get("MAX_PARALLEL", "1"))
POLL_SECONDS = float(os.environ.get("POLL_SECONDS", "2"))


class State:
    """What the endpoints report; one lock for all of it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ready = False
        self.draining = False  # set by POST /drain, cleared by DELETE /drain
        self.stopping = False  # set by SIGTERM, never cleared
        self.in_flight = 0
        self.idle = threading.Condition(self.lock)

    def accepting(self):
        with self.lock:
            return self.ready and not self.draining and not self.stopping

    def snapshot(self):
        with self.lock:
            return {"in_flight": self.in_flight, "draining": self.draining or self.stopping}


STATE = State()


# --- the hub -------------------------------------------------------------------


def hub_call(method, path, body=None):
    """One JSON call to the hub; None when there is no hub or it failed."""
    if not HUB_URL:
        return None
    headers = {"Content-Type": "application/json"}
    if HUB_TOKEN_FILE:
        with open(HUB_TOKEN_FILE, encoding="utf-8") as f:
            headers["Authorization"] = "Bearer " + f.read().strip()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(HUB_URL + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return json.loads(text) if text else {}
    except (urllib.error.URLError, OSError, ValueError) as e:
        log.warning("hub %s %s: %s", method, path, e)
        return None


def register():
    """Registers with the hub under this host's agent id and image digest.

    The path and body are this example hub's own (the SPEC leaves the worker
    side of the hub to you); what matters is that afterwards the hub answers
    GET /v1/workers/{GPU_AGENT_ID} with {"registered": true, "digest":
    GPU_AGENT_DIGEST, "in_flight": N}. Retried until it works: the agent waits
    up to hub.registration_timeout for it after a swap.
    """
    if not HUB_URL:
        return
    if not AGENT_ID or not DIGEST:
        log.warning("GPU_AGENT_ID/GPU_AGENT_DIGEST unset: not started by gpu-agent?")
    body = {"agent_id": AGENT_ID, "digest": DIGEST, "max_parallel": MAX_PARALLEL}
    while not STATE.stopping:
        if hub_call("POST", f"/v1/workers/{AGENT_ID}/register", body) is not None:
            log.info("registered with the hub as %s on %s", AGENT_ID, DIGEST)
            return
        time.sleep(2)


# --- jobs ------------------------------------------------------------------------


def run_job(job):
    """Stand-in for the real work (load the model once, outside this, not per job)."""
    time.sleep(float(job.get("seconds", 5)))


def job_loop():
    """Takes jobs while accepting; each runs in its own thread."""
    slots = threading.BoundedSemaphore(MAX_PARALLEL)
    while not STATE.stopping:
        if not STATE.accepting():
            time.sleep(POLL_SECONDS)
            continue
        slots.acquire()  # until one of MAX_PARALLEL jobs is done
        # Ask for a job only while still accepting: a drain may have started.
        job = hub_call("POST", f"/v1/workers/{AGENT_ID}/next-job", {"digest": DIGEST}) if STATE.accepting() else None
        if not job:
            slots.release()
            time.sleep(POLL_SECONDS)
            continue
        with STATE.lock:
            STATE.in_flight += 1
        threading.Thread(target=work, args=(job, slots), daemon=True).start()


def work(job, slots):
    try:
        run_job(job)
        hub_call("POST", f"/v1/workers/{AGENT_ID}/jobs/{job.get('id', '')}/done", {"ok": True})
    except Exception as e:  # noqa: BLE001 - a failed job must not kill the worker
        log.exception("job failed: %s", e)
    finally:
        slots.release()
        with STATE.lock:
            STATE.in_flight -= 1
            STATE.idle.notify_all()


# --- HTTP: health and drain ---------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    def answer(self, code, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            # Healthy means "can do work": ready (model loaded, GPU usable).
            # Draining is not unhealthy: the agent must not see a drain as a crash.
            with STATE.lock:
                ok = STATE.ready
            self.answer(200 if ok else 503, {"ok": ok, "digest": DIGEST})
        elif self.path == "/drain":
            self.answer(200, STATE.snapshot())
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/drain":
            return self.answer(404, {"error": "not found"})
        with STATE.lock:
            STATE.draining = True
        log.info("drain: no new jobs")
        self.answer(200, STATE.snapshot())

    def do_DELETE(self):
        if self.path != "/drain":
            return self.answer(404, {"error": "not found"})
        with STATE.lock:
            STATE.draining = False
        log.info("drain cancelled: taking jobs again")
        self.answer(200, STATE.snapshot())

    def log_message(self, fmt, *args):  # health checks every second: keep quiet
        pass


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = ThreadingHTTPServer((BIND_ADDR, PORT), Handler)
    server.daemon_threads = True

    def on_sigterm(signum, _frame):
        # docker stop (and so the agent's swap) sends SIGTERM, then SIGKILL after
        # worker.stop_timeout: finish the jobs in flight within that time.
        log.info("signal %d: no new jobs, finishing %d in flight", signum, STATE.in_flight)
        with STATE.lock:
            STATE.stopping = True
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)

    # Load the model / warm the GPU here, then say ready.
    with STATE.lock:
        STATE.ready = True
    threading.Thread(target=register, daemon=True).start()
    threading.Thread(target=job_loop, daemon=True).start()
    log.info("listening on %s:%d as %s (%s)", BIND_ADDR, PORT, AGENT_ID or "-", DIGEST or "-")
    server.serve_forever()

    # SIGTERM: wait for the jobs in flight, then exit 0.
    with STATE.lock:
        while STATE.in_flight > 0:
            STATE.idle.wait()
    log.info("all jobs done: exiting")


if __name__ == "__main__":
    main()
