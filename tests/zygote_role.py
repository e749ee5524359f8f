"""A stand-in role for tests/test_zygote.py: `python -m tests.zygote_role MODE OUT` reports what it was started
with into OUT (JSON) and ends as MODE says."""

import atexit
import json
import os
import signal
import sys
import time

if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    facts = {"argv": sys.argv[1:], "env": os.environ.get("ROLE_VALUE"), "cwd": os.getcwd(), "pid": os.getpid(),
             "session": os.getsid(0) == os.getpid(), "name": __name__}  # fmt: skip
    with open(out, "w") as f:
        json.dump(facts, f)
    atexit.register(lambda: open(out + ".atexit", "w").close())  # noqa: SIM115 - proves a normal exit ran it
    print(f"role says {mode}", flush=True)
    if mode == "exit3":
        sys.exit(3)
    if mode == "text":
        sys.exit("a reason")
    if mode == "raise":
        raise RuntimeError("boom")
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "sleep":
        time.sleep(60)
    if mode == "linger":  # as the server does: SIGTERM starts a stop that ends when the test says (OUT.release)
        terms: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: terms.append(1))
        deadline = time.monotonic() + 60
        while not terms and time.monotonic() < deadline:
            time.sleep(0.02)
        open(out + ".term", "w").close()  # noqa: SIM115
        while not os.path.exists(out + ".release") and time.monotonic() < deadline:
            time.sleep(0.02)
