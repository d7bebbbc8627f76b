#!/usr/bin/env python3
"""How long a file-store change takes to be in force on a running gateway
(SPEC: within 1 s). Starts `keygate serve` (the binary given) on 127.0.0.1 with
a file store in a temporary folder and an upstream of its own, then N times:
creates a full-access key with the CLI and measures from the moment the CLI
exits (the store is written) until the gateway answers 200 to a GET with it,
polling every millisecond over one kept-alive connection. Prints p50, p90, p99
and max. Every process it starts is stopped on exit.

    python3 benches/reload_latency.py target/release/keygate [N]   # N = 100
"""

import http.client
import http.server
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time


class Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def main():
    binary = os.path.abspath(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    folder = tempfile.mkdtemp(prefix="keygate-reload-")
    config = os.path.join(folder, "keygate.toml")
    with open(config, "w") as f:
        f.write('[server]\nlisten = "127.0.0.1:0"\n[upstream]\nurl = "http://127.0.0.1:%d"\n'
                '[keys]\nstore = "keys.toml"\n[metrics]\nlisten = "127.0.0.1:0"\n'
                % upstream.server_address[1])
    with open(os.path.join(folder, "keys.toml"), "w") as f:
        f.write("")
    gw = subprocess.Popen([binary, "serve", "--config", config], stderr=subprocess.PIPE, text=True)
    try:
        addr = None
        for line in gw.stderr:
            m = re.search(r"client\.addr=([\d.:]+)", line)
            if m:
                addr = m.group(1)
                break
        threading.Thread(target=lambda: [None for _ in gw.stderr], daemon=True).start()
        host, port = addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port))
        took = []
        for _ in range(n):
            out = subprocess.run([binary, "keys", "--config", config, "create", "--name", "reload",
                                  "--access", "full-access", "--json"],
                                 check=True, capture_output=True, text=True).stdout
            key = json.loads(out)["key"]
            written = time.monotonic()
            while True:
                conn.request("GET", "/", headers={"x-api-key": key})
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    break
                time.sleep(0.001)
            took.append(time.monotonic() - written)
        took.sort()
        q = lambda p: took[min(len(took) - 1, int(p * len(took)))] * 1000
        print("%d file-store changes: in force after p50 %.0f ms, p90 %.0f ms, p99 %.0f ms, max %.0f ms"
              % (n, q(0.5), q(0.9), q(0.99), took[-1] * 1000))
    finally:
        gw.terminate()
        gw.wait()
        upstream.shutdown()


if __name__ == "__main__":
    main()
