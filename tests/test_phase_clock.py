"""The run's time-by-phase line: phases add up across openings, the rest is 'other', nesting is refused."""

import pytest

from flax_fld.reporting import phase_clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_phases_add_up_and_the_rest_is_other():
    time = FakeClock()
    clock = phase_clock.PhaseClock(time)
    time.now += 2.0  # setup, outside any phase
    for _ in range(3):
        with clock.phase("training"):
            time.now += 10.0
        with clock.phase("validation"):
            time.now += 1.5
    with clock.phase("test report"):
        time.now += 65.0
    seconds = clock.seconds()
    assert seconds == {"training": 30.0, "validation": 4.5, "test report": 65.0, "other": 2.0, "total": 101.5}
    assert clock.line() == ("time by phase: training 30s, validation 4.5s, test report 1m05s, other 2.0s "
                            "(total 1m42s)")


def test_a_phase_that_raises_still_counts_its_seconds():
    time = FakeClock()
    clock = phase_clock.PhaseClock(time)
    with pytest.raises(ValueError):
        with clock.phase("data"):
            time.now += 3.0
            raise ValueError("bad image")
    assert clock.seconds()["data"] == 3.0
    with clock.phase("data"):  # closed despite the error: it opens again
        time.now += 1.0
    assert clock.seconds()["data"] == 4.0


def test_nested_phases_are_refused():
    clock = phase_clock.PhaseClock(FakeClock())
    with clock.phase("training"):
        with pytest.raises(RuntimeError, match="'plots' opened inside another phase"):
            with clock.phase("plots"):
                pass


def test_the_line_of_a_given_record_says_what_the_record_holds():
    time = FakeClock()
    clock = phase_clock.PhaseClock(time)
    record = {"training": 30.0, "other": 0.0, "total": 30.0}
    time.now += 500.0  # the clock has moved on since the record was taken
    assert clock.line(record) == "time by phase: training 30s, other 0.0s (total 30s)"
    assert record == {"training": 30.0, "other": 0.0, "total": 30.0}  # not consumed
