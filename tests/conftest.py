"""Root of the test suite: the header names what was tested, so a failure elsewhere says what differed."""

from __future__ import annotations


def pytest_report_header(config):
    from adapt.environment import one_line

    return [f"adapt tested with: {one_line()}"]
