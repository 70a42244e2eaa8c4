"""A scripted stand-in for a vendor CLI's headless run, to exercise the run service on the host.

The real CLIs run against provider stand-ins in real VMs (``tests/vm/test_runs.py``); here the
service's own logic is under test (storing, streaming, resuming, cancelling, ending), so this
program replays lines a real CLI printed. It reads its script as JSON from stdin (where the
service sends the prompt):

    {"lines": [...], "stderr": "...", "exit": 0, "pause_s": 0.02, "hang": false,
     "child": false, "marker": "/path"}

``lines`` go to stdout one by one, ``pause_s`` apart; with ``hang`` it then sleeps until killed;
with ``child`` it first starts a grandchild that sleeps (its pid written to ``marker``), which
must die with the run's process group. A prompt that is not JSON is answered as plain text.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def main() -> int:
    raw = sys.stdin.read()
    try:
        script = json.loads(raw)
    except ValueError:
        script = {"lines": [f"plain prompt of {len(raw)} bytes"]}
    if script.get("child"):
        child = subprocess.Popen(["sleep", "600"])
        with open(script["marker"], "w") as marker:
            marker.write(str(child.pid))
    for line in script.get("lines", []):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        time.sleep(float(script.get("pause_s", 0.0)))
    if script.get("stderr"):
        sys.stderr.write(script["stderr"])
        sys.stderr.flush()
    while script.get("hang"):
        time.sleep(1)
    return int(script.get("exit", 0))


if __name__ == "__main__":
    sys.exit(main())
