"""Incremental detokenizing and stop strings, without a model."""

from handlers.text import IncrementalDecoder, StopMatcher

# A toy byte-level vocabulary: "é" (C3 A9) and "🙂" (F0 9F 99 82) are split over tokens.
VOCAB = {0: b"He", 1: b"llo", 2: b" caf", 3: b"\xc3", 4: b"\xa9", 5: b"\xf0\x9f", 6: b"\x99", 7: b"\x82", 8: b"!"}


def decode(ids):
    return b"".join(VOCAB[i] for i in ids).decode("utf-8", errors="replace")


def stream(ids, stops=()):
    dec, stop = IncrementalDecoder(decode), StopMatcher(stops)
    out = []
    for i in ids:
        out.append(stop.feed(dec.push(i)))
        if stop.stopped:
            break
    out.append(stop.flush())
    return out, stop


def test_never_emits_half_a_character():
    out, stop = stream([0, 1, 2, 3, 4, 5, 6, 7, 8])
    assert all("\ufffd" not in piece for piece in out)
    assert "".join(out) == "Hello café🙂!" == stop.text


def test_stop_string_across_tokens_is_cut_and_never_shown():
    out, stop = stream([0, 1, 2, 3, 4, 8], stops=["lo caf"])
    assert "".join(out) == "Hel" == stop.text
    assert stop.stopped


def test_partial_stop_prefix_is_held_then_released():
    stop = StopMatcher(["END"])
    assert stop.feed("abc E") == "abc "  # "E" could start "END"
    assert stop.feed("x") == "Ex"  # it did not
    assert stop.feed("EN") == ""
    assert stop.flush() == "EN" and not stop.stopped


def test_earliest_of_several_stops_wins():
    stop = StopMatcher(["world", "lo w"])
    stop.feed("hello world")
    assert stop.stopped and stop.text == "hel"
    assert stop.matched == "lo w"


def test_matched_stop_is_the_one_that_ended_the_text():
    stop = StopMatcher(["abc", "ab", "zz"])
    stop.feed("x a")
    assert stop.matched is None and not stop.stopped
    stop.feed("bcd")  # "ab" and "abc" both start here: "ab" was complete first
    assert stop.stopped and stop.text == "x " and stop.matched == "ab"
    _, across = stream([0, 1, 2], stops=["lo c"])  # across tokens
    assert across.matched == "lo c" and across.text == "Hel"
    assert StopMatcher([]).matched is None


def test_no_stops_passes_text_through():
    stop = StopMatcher([])
    assert stop.feed("abc") == "abc" and stop.flush() == ""
