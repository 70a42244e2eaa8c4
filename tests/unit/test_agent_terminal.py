"""The agent's terminal emulator: what a full-screen CLI shows, not the bytes it wrote."""

from __future__ import annotations

from hearth_agent.terminal import Screen


def feed(screen: Screen, text: str, *, chunk: int = 0) -> Screen:
    data = text.encode()
    if chunk:
        for start in range(0, len(data), chunk):
            screen.feed(data[start : start + chunk])
    else:
        screen.feed(data)
    return screen


def test_colours_are_dropped_and_text_kept() -> None:
    screen = feed(Screen(5, 40), "\x1b[1m\x1b[38;5;110mHello\x1b[39m \x1b[32mworld\x1b[0m")
    assert screen.lines()[0] == "Hello world"


def test_sequences_split_anywhere_give_the_same_screen() -> None:
    text = "\x1b[2J\x1b[H● 1. Sign in\r\n\x1b]0;title\x07  2. API key\x1b[1A\x1b[3G»"
    whole = feed(Screen(5, 40), text).text()
    for chunk in (1, 2, 3, 5):
        assert feed(Screen(5, 40), text, chunk=chunk).text() == whole
    assert whole == "● ». Sign in\n  2. API key"


def test_redraw_with_cursor_up_and_erase_replaces_the_old_frame() -> None:
    screen = Screen(6, 40)
    feed(screen, "Choose:\r\n> Dark\r\n  Light\r\n")
    feed(screen, "\x1b[3A\x1b[2KWaiting for authentication...\r\n\x1b[0J")
    assert screen.text() == "Waiting for authentication..."
    assert "Dark" not in screen.normalized()


def test_long_lines_wrap_and_the_screen_scrolls() -> None:
    screen = Screen(3, 10)
    feed(screen, "0123456789abcdef\r\nline2\r\nline3")
    assert screen.lines() == ["abcdef", "line2", "line3"]


def test_alternate_screen_is_blank_and_leaving_restores_the_main_one() -> None:
    screen = Screen(4, 20)
    feed(screen, "shell prompt")
    feed(screen, "\x1b[?1049h\x1b[Hfull screen UI")
    assert screen.text() == "full screen UI"
    feed(screen, "\x1b[?1049l")
    assert screen.text() == "shell prompt"


def test_queries_get_answers_like_a_real_terminal() -> None:
    screen = Screen(10, 40)
    feed(screen, "ab\x1b[c\x1b[6n\x1b[>c")
    assert screen.take_replies() == b"\x1b[?62;22c\x1b[1;3R\x1b[>0;10;0c"
    assert screen.take_replies() == b""


def test_normalized_text_joins_words_for_matching() -> None:
    screen = feed(Screen(6, 60), "│  Do you want\r\n│   to continue?   │")
    assert "Do you want to continue?" in screen.normalized()


def test_erase_and_insert_characters_and_lines() -> None:
    screen = feed(Screen(4, 20), "abcdef\x1b[1G\x1b[2P")  # delete two at column 1
    assert screen.lines()[0] == "cdef"
    feed(screen, "\x1b[2@")  # insert two blanks
    assert screen.lines()[0] == "  cdef"
    feed(screen, "\x1b[3X")  # erase three
    assert screen.lines()[0] == "   def"
    feed(screen, "\r\nnext\x1b[1;1H\x1b[L")  # insert a line at the top
    assert screen.lines()[:3] == ["", "   def", "next"]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    screen = Screen(2, 10)
    screen.feed(b"ok \xff\xfe end")
    assert screen.lines()[0].startswith("ok ")
    assert screen.lines()[0].endswith("end")
