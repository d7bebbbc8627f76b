#!/usr/bin/env python3
"""Fuzzes the config and store loaders through the real binary: `keygate check`
and `keygate serve` on mutated copies of fuzz/corpus/{config,store} seeds, for a
bounded time. Every run must end by itself within 2 s (serve: or still be
serving, for an input that is valid), exit 0 or 1, and on exit 1 print a last
stderr line starting `keygate: `. Anything else is a finding, saved under
fuzz/artifacts/startup/. Not part of CI.

    python3 fuzz/startup.py target/debug/keygate [SECONDS]   # default 180 s

Every process binds 127.0.0.1 only (listen addresses are forced to port 0) and
is killed by PID when its bound runs out.
"""

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BOUND = 2.0


def seeds(kind):
    folder = os.path.join(HERE, "corpus", kind)
    out = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out.append(f.read())
    return out


TOKENS = [b"\n", b"=", b"\"", b"[", b"]", b"[[keys]]\n", b"\xff", b"\x00", b"#", b"'",
          b"0s", b"-1", b"99999999999999999999", b"\"\"\"", b"{", b"}", b",", b"\\",
          b"store", b"listen", b"tls", b"postgres://u:pw@", b"..", b"/", b"\t", b"\r"]


def mutate(data, rng):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[at:at] = rng.choice(TOKENS)
        elif op == 2 and data:
            end = min(len(data), at + rng.randint(1, 16))
            del data[at:end]
        elif op == 3:
            data = data[:at]
        else:
            line = rng.choice(bytes(data).split(b"\n") or [b""])
            data[at:at] = line + b"\n"
    return bytes(data)


def loopback_only(config):
    # Whatever the mutation did, nothing may listen beyond loopback port 0.
    return re.sub(rb"listen\s*=\s*\"[^\"\n]*\"", b"listen = \"127.0.0.1:0\"", config)


def serves_on_loopback(config):
    # serve only when [server] names its listen address (forced to loopback
    # above); without one it would bind 0.0.0.0:8080.
    m = re.search(rb"^\[server\]\s*$(.*?)(^\[|\Z)", config, re.S | re.M)
    return bool(m and re.search(rb"^listen = \"127.0.0.1:0\"", m.group(1), re.M))


def run(binary, command, folder):
    start = time.monotonic()
    p = subprocess.Popen([binary, command, "--config", os.path.join(folder, "keygate.toml")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env={k: v for k, v in os.environ.items()
                                                      if k != "RUST_LOG"})
    try:
        _, err = p.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        return "running", time.monotonic() - start, err
    return p.returncode, time.monotonic() - start, err


def main():
    binary = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 180.0
    rng = random.Random(int(os.environ.get("SEED", "1")))
    configs, stores = seeds("config"), seeds("store")
    artifacts = os.path.join(HERE, "artifacts", "startup")
    counts = {"runs": 0, "exit 0": 0, "exit 1": 0, "serving": 0, "findings": 0}
    slowest = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        folder = tempfile.mkdtemp(prefix="keygate-fuzz-")
        try:
            config = rng.choice(configs)
            store = rng.choice(stores)
            if rng.random() < 0.5:
                config = mutate(config, rng)
            else:
                store = mutate(store, rng)
            config = loopback_only(config)
            with open(os.path.join(folder, "keygate.toml"), "wb") as f:
                f.write(config)
            with open(os.path.join(folder, "keys.toml"), "wb") as f:
                f.write(store)
            commands = ("check", "serve") if serves_on_loopback(config) else ("check",)
            for command in commands:
                code, took, err = run(binary, command, folder)
                counts["runs"] += 1
                # Lines end in "\n" only: any other control character in the
                # last line is a finding too.
                lines = err.decode("utf-8", "replace").strip("\n").split("\n")
                last = lines[-1] if lines else ""
                if code == "running":
                    ok = command == "serve" and "keygate listening" in err.decode("utf-8", "replace")
                    counts["serving"] += ok
                elif code == 0:
                    ok = command == "check"
                    counts["exit 0"] += 1
                else:
                    ok = (code == 1 and last.startswith("keygate: ") and took < BOUND
                          and not any(ord(ch) < 32 and ch != "\t" for ch in last))
                    counts["exit 1"] += code == 1
                    slowest = max(slowest, took)
                if not ok:
                    counts["findings"] += 1
                    os.makedirs(artifacts, exist_ok=True)
                    dest = os.path.join(artifacts, "case-%d" % counts["runs"])
                    shutil.copytree(folder, dest)
                    with open(os.path.join(dest, "result.txt"), "w") as f:
                        f.write("%s %s %.3fs\n%s\n" % (command, code, took, err.decode("utf-8", "replace")))
                    print("finding: %s exited %s after %.3fs; saved %s" % (command, code, took, dest))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print("%(runs)d runs: %(exit 0)d exit 0 (check), %(exit 1)d exit 1, %(serving)d serving, "
          "%(findings)d findings" % counts + "; slowest failed start %.3fs" % slowest)
    sys.exit(1 if counts["findings"] else 0)


if __name__ == "__main__":
    main()
