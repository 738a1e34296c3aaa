"""Skip or fail when a part a test needs is missing (mosquitto, devicebound-hub, the
broker plugin, an MQTT-enabled build, the stock SDK).

A developer without that part gets a skip that names it. With DEVICEBOUND_REQUIRE_ALL=1
(scripts/test.sh, scripts/test_python.sh and python/tests/run_broker_tests.sh set it,
as CI installs every part) the same test fails instead, so a suite cannot pass by
skipping itself. No imports beyond pytest: the broker tests' venv has no devicebound.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ALL = "DEVICEBOUND_REQUIRE_ALL"


def required_parts() -> bool:
    """Whether every part must be there (DEVICEBOUND_REQUIRE_ALL=1)."""
    return os.environ.get(REQUIRE_ALL) == "1"


def missing_part(reason: str, also: str | None = None, module_level: bool = False) -> None:
    """Skips the test (the whole module, with ``module_level``) for ``reason``; fails it
    instead under DEVICEBOUND_REQUIRE_ALL=1, or when the older, narrower variable ``also``
    (DEVICEBOUND_REQUIRE_MQTT, DEVICEBOUND_REQUIRE_HUB) is 1."""
    for variable in (REQUIRE_ALL, also):
        if variable and os.environ.get(variable) == "1":
            pytest.fail(f"missing part ({variable}=1): {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)
