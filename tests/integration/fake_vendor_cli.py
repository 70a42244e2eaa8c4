"""A scripted stand-in for a vendor CLI's login, to exercise the agent's PTY runner on the host.

The real vendor CLIs run in the VM tests (their logins need a network namespace with no way
out); this program behaves the way they do where the runner has to cope: a full-screen dialog
drawn with colours and cursor moves, a consent question, the URL handed to ``$BROWSER`` or to
``xdg-open``, and the credential file written once "the browser came back".

    fake_vendor_cli.py MODE URL

MODE: ``dialog`` (answer two prompts, then BROWSER), ``xdg`` (xdg-open, no prompts), ``theme``
(a question no script answers), ``exit`` (hand over the URL, then exit 3 without credentials),
``silent`` (never hand over a URL), ``child`` (like ``xdg`` but also leaves a grandchild
running, which must die with the login), ``crash`` (killed by SIGSEGV at start, every time),
``crash-once`` (killed by SIGSEGV at its first start in this work root, then like ``xdg``),
``crash-twice`` (SIGSEGV at its first start, exit status 7 at its second, then like ``xdg``).
The credential document is written to ``$HOME/.codex/auth.json`` when ``$HOME/go`` appears.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CSI = "\x1b["


def draw(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def ask(question: str, options: list[str]) -> str:
    """Draw a selection dialog the way Ink does (clear, home, colours) and read one line."""
    body = f"{CSI}2J{CSI}H{CSI}1m? {question}{CSI}22m\r\n"
    for index, option in enumerate(options):
        marker = f"{CSI}32m●{CSI}39m" if index == 0 else " "
        body += f"  {marker} {index + 1}. {option}\r\n"
    body += f"\r\n  {CSI}2m(Use Enter to select){CSI}22m{CSI}5A{CSI}3G"
    draw(body)
    return sys.stdin.readline()


def document() -> dict[str, object]:
    return {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": "header.payload.sig",
            "access_token": "fake-access-token-value",
            "refresh_token": "fake-refresh-token-value",
            "account_id": "acct",
        },
        "last_refresh": "2026-11-29T00:00:00Z",
    }


def main() -> int:
    mode, url = sys.argv[1], sys.argv[2]
    home = Path(os.environ["HOME"])
    draw(f"{CSI}?1049h{CSI}38;5;110mFake CLI{CSI}39m v1\r\n")
    if mode == "theme":
        ask("Choose a colour theme", ["Dark", "Light"])
        time.sleep(3600)
    if mode == "silent":
        time.sleep(3600)
    # Beside the work root that holds every attempt's private directory (<root>/login-*/home).
    first_start = home.parent.parent.parent / "fakecli-started-once"
    if mode == "crash" or (mode == "crash-once" and not first_start.exists()):
        first_start.touch()
        os.kill(os.getpid(), signal.SIGSEGV)
    second_start = first_start.with_name("fakecli-started-twice")
    if mode == "crash-twice":
        if not first_start.exists():
            first_start.touch()
            os.kill(os.getpid(), signal.SIGSEGV)
        if not second_start.exists():
            second_start.touch()
            return 7
    if mode == "dialog":
        ask("How would you like to sign in?", ["Browser", "API key"])
        ask("Open the sign-in page in your browser. Do you want to continue?", ["Yes", "No"])
        subprocess.run([os.environ["BROWSER"], url], check=True)
    else:
        subprocess.run(["xdg-open", url], check=True)
    if mode == "child":
        subprocess.Popen(["sleep", "3600"])
    draw(f"{CSI}2J{CSI}HWaiting for authentication... (Press Esc to cancel)\r\n")
    if mode == "exit":
        return 3
    while not (home / "go").exists():
        time.sleep(0.1)
    target = home / ".codex" / "auth.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    partial.write_text(json.dumps(document()))
    partial.rename(target)
    draw("Logged in.\r\n")
    time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
