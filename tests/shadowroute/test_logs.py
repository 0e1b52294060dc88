"""RepeatFilter: the first of each kind passes, repeats are summarised once a period."""

from __future__ import annotations

import logging

import pytest

from shadowroute.logs import RepeatFilter


def test_repeats_fold_into_one_summary_a_period(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    f = RepeatFilter(10.0, clock=lambda: now[0])
    handler = caplog.handler
    handler.addFilter(f)
    log = logging.getLogger("aiokafka.test")
    other = logging.getLogger("shadowroute.service")
    try:
        with caplog.at_level(logging.INFO):
            for i in range(100):
                log.error("Unable connect to node with id %s: %s", 111, f"refused {i}")
                log.warning("Marking the coordinator dead (node %s)", 111)
                now[0] += 0.05
            other.error("not folded %s", 1)
            other.error("not folded %s", 2)
            log.warning("offset reset: %s", "p0", extra={"news": True})
            log.warning("offset reset: %s", "p1", extra={"news": True})
            now[0] = 11.0
            f.summarise()
            now[0] = 40.0  # quiet for longer than a period: the next one is news again
            f.summarise()
            log.error("Unable connect to node with id %s: %s", 111, "refused again")
    finally:
        handler.removeFilter(f)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[:2] == ["Unable connect to node with id 111: refused 0",
                        "Marking the coordinator dead (node 111)"]
    assert msgs[2:6] == ["not folded 1", "not folded 2", "offset reset: p0", "offset reset: p1"]
    assert len(msgs) == 8, msgs
    assert msgs[6].startswith("198 repeated lines held back over the last 11 s: "
                              "99x aiokafka.test: ")
    assert "refused 99" in msgs[6]
    assert msgs[7] == "Unable connect to node with id 111: refused again"
