"""The exit status and summary of a run: one rule per way a run can end."""

from __future__ import annotations

import signal

import pytest

from live.outcome import RunReport, StopReason


def test_a_complete_offline_render_succeeds():
    report = RunReport(offline=True, promised=300, written=300)
    assert report.exit_code() == 0 and report.summary() == "done: 300 of 300 frames written"


@pytest.mark.parametrize("report, says", [
    (RunReport(offline=True, promised=300, written=0, failed=300), "300 frames failed in inference"),
    (RunReport(offline=True, promised=300, written=297, unreadable=3), "3 unreadable frames of the driving video"),
    (RunReport(offline=True, promised=300, written=120, reason=StopReason.OUTPUT_FAILED,
               detail="video file out.mp4 failed: No space left on device"), "No space left on device"),
    (RunReport(offline=True, promised=300, written=12, reason=StopReason.CAMERA_FAILED,
               detail="40 frames in a row cannot be decoded"), "cannot be decoded"),
    (RunReport(offline=False, written=0), "no frame was delivered"),
])
def test_a_run_that_did_not_deliver_what_was_asked_fails_and_says_why(report, says):
    assert report.exit_code() == 1
    assert says in report.summary() and report.summary().startswith(("incomplete", "stopped"))


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_exits_with_its_conventional_status(number):
    report = RunReport(offline=True, promised=300, written=40, reason=StopReason.SIGNAL, signal_number=number)
    assert report.exit_code() == 128 + number
    assert report.summary().startswith(f"stopped by {signal.Signals(number).name}: 40 of 300 frames written")


def test_the_quit_key_is_the_users_choice_and_succeeds():
    assert RunReport(offline=True, promised=300, written=40, reason=StopReason.QUIT).exit_code() == 0
    assert RunReport(offline=False, written=1000, dropped=12, reason=StopReason.QUIT).summary() == \
        "quit: 1000 frames written; 12 stale frames dropped"
