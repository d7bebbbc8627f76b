#!/usr/bin/env python3
"""Resident memory and load time of a running gateway over N reloads of a big
file store. Starts `keygate serve` (the binary given) with the config given
(its store must exist), waits for the first "key store loaded" line, then N
times sends SIGHUP and waits for the next one; after each, prints the
reload's duration_ms from that line and the process's VmRSS then and 2 s
later (what the allocator has given back by then). Stops the gateway on exit.

    python3 benches/reload_rss.py target/release/keygate keygate.toml [N]   # N = 10

A 1,000,000-key store for it: `python3 benches/gen_store.py 1000000 > keys.toml`.
"""

import os
import re
import signal
import subprocess
import sys
import time


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    binary, config = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    env = dict(os.environ, RUST_LOG="info")
    proc = subprocess.Popen(
        [binary, "serve", "--config", config],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        def next_load():
            deadline = time.time() + 600
            for line in proc.stderr:
                if "key store loaded" in line:
                    m = re.search(r"duration_ms[=\":]+(\d+)", line)
                    return int(m.group(1)) if m else -1
                if "reload failed" in line or time.time() > deadline:
                    raise SystemExit(f"no load: {line.strip()}")
            raise SystemExit("the gateway exited")

        def report(what, ms):
            now = rss_mib(proc.pid)
            time.sleep(2)
            print(f"{what:9s} load {ms:6d} ms   RSS {now:8.1f} MiB, 2 s later {rss_mib(proc.pid):8.1f} MiB", flush=True)

        report("start", next_load())
        for i in range(1, n + 1):
            proc.send_signal(signal.SIGHUP)
            report(f"reload {i:2d}", next_load())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


main()
