"""gwe's engine_report coalescing (gwe/report_trigger.py) on a clock the test moves."""
from gwe.report_trigger import BURST, REFILL_S, ReportTrigger


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trigger(clock: Clock) -> ReportTrigger:
    return ReportTrigger(processes=list, wake=lambda: None, clock=clock)


def test_the_changes_around_an_install_and_a_crash_go_out_at_once():
    clock = Clock()
    trigger = _trigger(clock)
    for step in range(3):  # gmq settles, the new app appears, then it crashes: 2 s apart
        clock.now += 2.0
        trigger.want()
        assert trigger.due_in() == 0.0, step
        assert trigger.take()
        assert trigger.due_in() is None


def test_a_crash_loop_costs_about_one_report_a_minute():
    clock = Clock()
    trigger = _trigger(clock)
    sent = 0
    for _ in range(int(600 / 0.4)):  # ten minutes of a state change every 0.4 s
        clock.now += 0.4
        trigger.want()
        if trigger.take():
            sent += 1
    assert BURST <= sent <= BURST + 600 / REFILL_S + 1, sent


def test_reports_on_change_are_at_least_a_second_apart_and_a_periodic_report_counts():
    clock = Clock()
    trigger = _trigger(clock)
    trigger.sent()  # a periodic report just went out
    trigger.want()
    assert 0.9 < trigger.due_in() <= 1.0
    assert not trigger.take()
    clock.now += 1.0
    assert trigger.take()
