"""The scripted answers to a vendor CLI's prompts, read off its settled terminal screen."""

from __future__ import annotations

import re

from hearth_agent.terminal import Screen
from hearth_agent.vendor_catalog import PromptStep, VendorLogin

# A screen unchanged this long has settled: a prompt on it is what the CLI waits for.
SETTLE_S = 1.0
UNEXPECTED_PROMPT_AFTER_S = 10.0
RESEND_AFTER_S = 15.0
_URL = re.compile(r"https?://\S+")
# What is left of a URL a terminal wrapped onto further lines: query-string-like runs.
_URL_PIECE = re.compile(r"\S*(?:[=&]|%[0-9A-Fa-f]{2})\S*")
# Screen texts that mean a CLI waits for an answer (matched on the normalized screen).
PROMPT_MARKERS = ("Enter to select", "[y/N]", "[Y/n]", "(y/n)", "Press Enter to continue")


def redact(text: str) -> str:
    """Text safe to log or report: URLs (which carry OAuth state) replaced, including the pieces
    of one that the terminal wrapped onto the next lines."""
    return _URL_PIECE.sub("<…>", _URL.sub("<url>", text))


class PromptScript:
    """Which scripted answer to type next, or which question nobody scripted.

    A step is answered once its text is on a screen that settled after the last answer. A CLI
    that is slow to react (emulation) leaves the answered question on screen for a while: that is
    never taken for a new question, and after ``RESEND_AFTER_S`` without any change the same
    answer is typed once more (a key pressed before the CLI listened is lost).
    """

    def __init__(self, login: VendorLogin) -> None:
        self._login = login
        self._steps = list(login.steps)
        self._answered: PromptStep | None = None
        self._answered_version = -1
        self._answered_at = 0.0
        self._resent = False

    def next_action(
        self, screen: Screen, *, now: float, changed_at: float
    ) -> PromptStep | str | None:
        """A step to type, the text of an unexpected question (a str), or None to wait."""
        text = screen.normalized()
        fresh = screen.version > self._answered_version
        settled = now - changed_at >= SETTLE_S
        if self._steps and fresh and settled and self._steps[0].expect in text:
            return self._answer(self._steps.pop(0), screen, now)
        answered = self._answered
        if (
            answered is not None
            and not fresh
            and not self._resent
            and now - self._answered_at >= RESEND_AFTER_S
            and answered.expect in text
        ):
            self._resent = True
            return self._answer(answered, screen, now)
        if (
            fresh
            and now - changed_at >= UNEXPECTED_PROMPT_AFTER_S
            and any(marker in text for marker in PROMPT_MARKERS)
            and not any(w in text for w in self._login.waiting)
            and not (self._steps and self._steps[0].expect in text)
        ):
            return redact(text)[-300:]
        return None

    def _answer(self, step: PromptStep, screen: Screen, now: float) -> PromptStep:
        if step is not self._answered:
            self._resent = False
        self._answered, self._answered_version, self._answered_at = step, screen.version, now
        return step
