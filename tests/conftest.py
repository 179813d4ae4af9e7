"""Root of the test suite: the header names what was tested, so a failure elsewhere says what differed;
the `checks` fixture gives both packages' tests the shared helpers of tests/fault_injection.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# the CLI property tests: a fixed, bounded set of examples (reproducible, minutes not hours on CI)
settings.register_profile(
    "cli-fuzz",
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def pytest_report_header(config):
    from adapt.environment import one_line

    return [f"adapt tested with: {one_line()}"]


@pytest.fixture(scope="session")
def checks():
    """tests/fault_injection.py as a module: check_kills, assert_clean_exit, snapshot."""
    spec = importlib.util.spec_from_file_location(
        "fault_injection", Path(__file__).with_name("fault_injection.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
