"""Slot states are an enum with the legal transitions written down; anything else is refused."""

import types

import pytest

from mqttbuffer.stats import SharedStats
from mqttbuffer.supervisor.slots import LEGAL, Slot, State


def slot():
    return Slot(types.SimpleNamespace(name="forwarder"), context=None, stats=SharedStats())


def test_every_state_has_its_transitions_and_status_shows_plain_words():
    assert set(LEGAL) == set(State)
    assert all(targets <= set(State) for targets in LEGAL.values())
    assert State.RUNNING == "RUNNING" and f"{State.BACKOFF}" == "BACKOFF"


@pytest.mark.parametrize("target", [State.RUNNING, State.BACKOFF, State.STOPPING])
def test_a_slot_that_never_started_cannot_jump_ahead(target):
    s = slot()
    with pytest.raises(AssertionError, match=f"illegal transition EXITED -> {target}"):
        s._transition(target)
    assert s.state == State.EXITED


def test_terminate_without_a_process_ends_exited():
    s = slot()
    s.state = State.BACKOFF
    s.terminate()
    assert s.state == State.EXITED
