"""A stand-in for `python -m vllm.entrypoints.cli.main serve …` to test the server lifecycle on CPU:
it forks a child (as vLLM's engine core does), answers /health, /metrics and streamed /v1/completions,
and can be told to crash or hang at start."""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
mode = os.environ.get("FAKE_VLLM_MODE", "ok")
child = os.fork()
if child == 0:  # the "engine core": lives until its process group is stopped
    while True:
        time.sleep(1)
with open(os.environ["FAKE_VLLM_PIDFILE"], "w") as f:
    f.write(str(child))
print("Model loading took 0.25 GiB memory", flush=True)
print("GPU KV cache size: 12,345 tokens", flush=True)
if mode == "crash":
    sys.exit(3)
if mode == "hang":
    time.sleep(3600)


class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        body = b"vllm:spec_decode_num_drafts_total 4.0\n" if self.path == "/metrics" else b""
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path.startswith("/reset_prefix_cache"):   # vLLM registers this route in dev mode only
            self.send_response(200 if os.environ.get("VLLM_SERVER_DEV_MODE") == "1" else 404)
            self.end_headers()
            with open(os.environ["FAKE_VLLM_PIDFILE"] + ".resets", "a") as f:
                f.write("reset\n")
            return
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(1, req["max_tokens"] + 1, 2):  # two tokens per chunk, like speculation
            n = min(i + 1, req["max_tokens"])
            chunk = {"choices": [{"text": "x"}], "usage": {"prompt_tokens": 3, "completion_tokens": n}}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.01)
        self.wfile.write(b"data: [DONE]\n\n")


ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
