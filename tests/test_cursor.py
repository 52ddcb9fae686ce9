"""The cursor's per-page protocol, `Cursor.take_page`: one call per page enters the window the
reader opened, admits the page's events to the ledger, finishes the page, and says what to send
and what to save."""

from __future__ import annotations

import hashlib

from shared.cursor import Cursor, Window, WindowPlan

T0 = 1_800_000_000
PLAN = WindowPlan(end_limit=T0 + 3600, max_span=3600, overlap=600, recent=240, settled_before=T0)


def digest(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def test_the_first_page_enters_the_window_the_reader_opened_in_a_new_pass():
    cursor = Cursor.starting_at(T0)
    window = Window(T0 - 240, T0 + 1800)
    taken = cursor.take_page(window, [(digest("a"), T0 + 5)], "token-2", 1, PLAN)
    assert cursor.window == window and cursor.pass_number == 1
    assert taken.occurrences == (1,) and taken.duplicates == 0
    assert taken.save.cursor.continuation_token == "token-2" and taken.save.segment is not None


def test_an_event_sent_before_and_read_again_in_the_overlap_is_a_duplicate_and_not_sent_again():
    cursor = Cursor.starting_at(T0)
    cursor.take_page(Window(T0, T0 + 1800), [(digest("a"), T0 + 1700)], None, 1, PLAN)
    overlap = Window(T0 + 1800 - 240, T0 + 3600)  # the next window re-reads the last 240 s
    taken = cursor.take_page(overlap, [(digest("a"), T0 + 1700), (digest("b"), T0 + 2000)], None, 2, PLAN)
    assert taken.occurrences == (None, 1) and taken.duplicates == 1


def test_an_event_outside_the_window_is_left_to_the_window_that_holds_it():
    cursor = Cursor.starting_at(T0)
    taken = cursor.take_page(Window(T0, T0 + 1800), [(digest("next"), T0 + 1800)], None, 1, PLAN)
    assert taken.occurrences == (None,) and taken.duplicates == 0


def test_identical_events_on_one_page_get_occurrences_one_and_two_and_a_repeat_of_them_none():
    cursor = Cursor.starting_at(T0)
    window = Window(T0, T0 + 1800)
    twins = [(digest("twin"), T0 + 9), (digest("twin"), T0 + 9)]
    assert cursor.take_page(window, twins, "token-2", 2, PLAN).occurrences == (1, 2)
    cursor.restart_window()  # the API refused the token: the window is read again from its first page
    taken = cursor.take_page(window, twins, None, 2, PLAN)
    assert taken.occurrences == (None, None) and taken.duplicates == 2


def test_a_new_event_in_time_read_before_is_marked_late():
    cursor = Cursor.starting_at(T0)
    cursor.take_page(Window(T0, T0 + 1800), [(digest("on time"), T0 + 100)], None, 1, PLAN)
    taken = cursor.take_page(Window(T0 + 1800 - 240, T0 + 3600), [(digest("late"), T0 + 1700)], None, 1, PLAN)
    assert taken.occurrences == (1,) and taken.late == (True,)
    assert taken.save.cursor.watermark == T0 + 3600 and taken.save.cursor.window is None
