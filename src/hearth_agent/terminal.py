"""A small terminal emulator: what a program under a pseudo-terminal shows on its screen.

The vendor CLIs draw full-screen interfaces (Ink) with colours, cursor moves and partial redraws;
matching their prompts against raw bytes breaks on the first escape sequence. ``Screen`` applies
the output the way a VT100/xterm would, so prompts are matched against the text a user would see.

Handled: printable text with autowrap, CR/LF/BS/TAB, cursor movement and positioning (CSI A-H, d,
f, `), erase in display/line (J, K), erase/insert/delete characters and lines (X, @, P, L, M),
scrolling, save/restore cursor (ESC 7/8, CSI s/u), the alternate screen (``?1049h/l``, ``?47``,
``?1047``), and full reset (ESC c). Colours and every other mode are ignored; OSC, DCS, APC, PM
and SOS strings are skipped. Queries a real terminal answers (device attributes, cursor position,
device status) get answers in ``replies``, because some CLIs wait for them before drawing.
Characters are one cell wide; that is enough for matching text.
"""

from __future__ import annotations

import codecs

_ESC = "\x1b"
_CSI_FINAL_MIN = 0x40
_CSI_FINAL_MAX = 0x7E
_STRING_STARTERS = {"]", "P", "_", "^", "X"}  # OSC, DCS, APC, PM, SOS: skipped to ST or BEL
_ALT_SCREEN_MODES = {"1049", "1047", "47"}
# Box drawing (U+2500-U+257F) and the ASCII border "|" read as blanks when matching prompts.
_BOX_DRAWING = {code: " " for code in [*range(0x2500, 0x2580), ord("|")]}


class Screen:
    """A ``rows`` x ``cols`` character grid fed with a program's output."""

    def __init__(self, rows: int = 40, cols: int = 120) -> None:
        self.rows = rows
        self.cols = cols
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._grid = self._blank()
        self._saved_grid: list[list[str]] | None = None
        self._row = 0
        self._col = 0
        self._saved_cursor = (0, 0)
        self._wrap_pending = False
        self._state = "text"
        self._sequence = ""
        self._replies: list[bytes] = []
        self.version = 0  # bumped by every feed that changed something

    def _blank(self) -> list[list[str]]:
        return [[" "] * self.cols for _ in range(self.rows)]

    # -- reading ---------------------------------------------------------------------------

    def lines(self) -> list[str]:
        """The screen's rows, trailing blanks removed."""
        return ["".join(row).rstrip() for row in self._grid]

    def text(self) -> str:
        """The screen as text, one row per line, without trailing blank rows."""
        return "\n".join(self.lines()).rstrip("\n")

    def normalized(self) -> str:
        """The screen's words joined by single spaces, box borders dropped: what prompts match.

        A dialog's sentence that wraps inside a box reads as one sentence again.
        """
        return " ".join(self.text().translate(_BOX_DRAWING).split())

    def take_replies(self) -> bytes:
        """What the terminal owes the program (answers to its queries), once."""
        replies, self._replies = self._replies, []
        return b"".join(replies)

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Apply a chunk of the program's output (any split of a UTF-8 or escape sequence)."""
        text = self._decoder.decode(data)
        if text:
            self.version += 1
        for char in text:
            self._step(char)

    def _step(self, char: str) -> None:
        state = self._state
        if state == "text":
            self._text(char)
        elif state == "escape":
            self._escape(char)
        elif state == "csi":
            self._sequence += char
            if _CSI_FINAL_MIN <= ord(char) <= _CSI_FINAL_MAX:
                self._state = "text"
                self._csi(self._sequence[:-1], char)
            elif len(self._sequence) > 64:  # not a real sequence; drop it
                self._state = "text"
        elif state == "string":
            if char == "\x07":
                self._state = "text"
            elif char == _ESC:
                self._state = "string_escape"
        elif state == "string_escape":
            self._state = "text" if char == "\\" else "string"
        elif state == "charset":
            self._state = "text"  # ESC ( B and friends: one designator byte

    def _text(self, char: str) -> None:
        if char == _ESC:
            self._state = "escape"
        elif char == "\r":
            self._col = 0
            self._wrap_pending = False
        elif char in "\n\x0b\x0c":
            self._line_feed()
        elif char == "\b":
            self._col = max(0, self._col - 1)
            self._wrap_pending = False
        elif char == "\t":
            self._col = min(self.cols - 1, (self._col // 8 + 1) * 8)
        elif char < " " or char == "\x7f":
            pass  # BEL, SO, SI and other controls draw nothing
        else:
            self._put(char)

    def _put(self, char: str) -> None:
        if self._wrap_pending:
            self._col = 0
            self._line_feed()
            self._wrap_pending = False
        self._grid[self._row][self._col] = char
        if self._col == self.cols - 1:
            self._wrap_pending = True
        else:
            self._col += 1

    def _line_feed(self) -> None:
        self._wrap_pending = False
        if self._row == self.rows - 1:
            self._grid.pop(0)
            self._grid.append([" "] * self.cols)
        else:
            self._row += 1

    def _escape(self, char: str) -> None:
        self._state = "text"
        if char == "[":
            self._state = "csi"
            self._sequence = ""
        elif char in _STRING_STARTERS:
            self._state = "string"
        elif char in "()*+":
            self._state = "charset"
        elif char == "7":
            self._saved_cursor = (self._row, self._col)
        elif char == "8":
            self._row, self._col = self._saved_cursor
        elif char == "c":
            self._grid = self._blank()
            self._row = self._col = 0
        elif char == "D":
            self._line_feed()
        elif char == "E":
            self._col = 0
            self._line_feed()
        elif char == "M":
            if self._row == 0:
                self._grid.insert(0, [" "] * self.cols)
                self._grid.pop()
            else:
                self._row -= 1

    def _csi(self, body: str, final: str) -> None:
        private = body[:1] in ("?", ">", "<", "=")
        params_text = body[1:] if private else body
        params_text = params_text.rstrip(" !\"#$%&'*+,-./")  # intermediate bytes
        params = [int(p) if p.isdigit() else 0 for p in params_text.split(";") if params_text]

        def arg(index: int = 0, default: int = 1) -> int:
            value = params[index] if index < len(params) else 0
            return value if value else default

        self._wrap_pending = False
        if private:
            self._private_mode(body[0], params_text, final)
            return
        if final == "A":
            self._row = max(0, self._row - arg())
        elif final in "Be":
            self._row = min(self.rows - 1, self._row + arg())
        elif final in "Ca":
            self._col = min(self.cols - 1, self._col + arg())
        elif final == "D":
            self._col = max(0, self._col - arg())
        elif final == "E":
            self._row = min(self.rows - 1, self._row + arg())
            self._col = 0
        elif final == "F":
            self._row = max(0, self._row - arg())
            self._col = 0
        elif final in "G`":
            self._col = min(self.cols - 1, arg() - 1)
        elif final == "d":
            self._row = min(self.rows - 1, arg() - 1)
        elif final in "Hf":
            self._row = min(self.rows - 1, arg(0) - 1)
            self._col = min(self.cols - 1, arg(1) - 1)
        elif final == "J":
            self._erase_display(arg(default=0))
        elif final == "K":
            self._erase_line(arg(default=0))
        elif final == "X":
            end = min(self.cols, self._col + arg())
            for col in range(self._col, end):
                self._grid[self._row][col] = " "
        elif final == "@":
            row = self._grid[self._row]
            count = min(arg(), self.cols - self._col)
            row[self._col : self._col] = [" "] * count
            del row[self.cols :]
        elif final == "P":
            row = self._grid[self._row]
            count = min(arg(), self.cols - self._col)
            del row[self._col : self._col + count]
            row.extend([" "] * count)
        elif final == "L":
            for _ in range(min(arg(), self.rows - self._row)):
                self._grid.insert(self._row, [" "] * self.cols)
                self._grid.pop()
        elif final == "M":
            for _ in range(min(arg(), self.rows - self._row)):
                self._grid.pop(self._row)
                self._grid.append([" "] * self.cols)
        elif final == "S":
            for _ in range(min(arg(), self.rows)):
                self._grid.pop(0)
                self._grid.append([" "] * self.cols)
        elif final == "T":
            for _ in range(min(arg(), self.rows)):
                self._grid.insert(0, [" "] * self.cols)
                self._grid.pop()
        elif final == "s":
            self._saved_cursor = (self._row, self._col)
        elif final == "u":
            self._row, self._col = self._saved_cursor
        elif final == "c":
            self._replies.append(b"\x1b[?62;22c")  # a VT220 with ANSI colour
        elif final == "n":
            if arg(default=0) == 6:
                self._replies.append(f"\x1b[{self._row + 1};{self._col + 1}R".encode())
            elif arg(default=0) == 5:
                self._replies.append(b"\x1b[0n")
        # m (colours), r (scroll region), h/l (modes), t (window ops), q ...: nothing to draw

    def _private_mode(self, marker: str, params_text: str, final: str) -> None:
        if marker == "?" and final in "hl":
            if set(params_text.split(";")) & _ALT_SCREEN_MODES:
                self._switch_screen(alternate=final == "h")
        elif marker == ">" and final == "c":
            self._replies.append(b"\x1b[>0;10;0c")
        elif marker == "?" and final == "u":
            pass  # kitty keyboard protocol query: no answer means "not supported"

    def _switch_screen(self, *, alternate: bool) -> None:
        if alternate and self._saved_grid is None:
            self._saved_grid = self._grid
            self._saved_cursor = (self._row, self._col)
            self._grid = self._blank()
        elif not alternate and self._saved_grid is not None:
            self._grid = self._saved_grid
            self._saved_grid = None
            self._row, self._col = self._saved_cursor

    def _erase_display(self, mode: int) -> None:
        if mode == 0:
            self._erase_line(0)
            for row in range(self._row + 1, self.rows):
                self._grid[row] = [" "] * self.cols
        elif mode == 1:
            self._erase_line(1)
            for row in range(self._row):
                self._grid[row] = [" "] * self.cols
        else:
            self._grid = self._blank()

    def _erase_line(self, mode: int) -> None:
        row = self._grid[self._row]
        if mode == 0:
            start, end = self._col, self.cols
        elif mode == 1:
            start, end = 0, self._col + 1
        else:
            start, end = 0, self.cols
        for col in range(start, end):
            row[col] = " "
