"""Shared by the bad-input campaigns: print their counts at the end of a test run."""

from __future__ import annotations

import contextlib


def report_line(request, line: str) -> None:
    """Write `line` to pytest's terminal, past output capture, so that -q runs show it too."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line("")
            reporter.write_line(line)
