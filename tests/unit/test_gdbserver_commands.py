"""vCont parsing and stop replies: the packets that move the inferior and report on it."""

from __future__ import annotations

import pytest

from hwbp.gdbserver.commands import Resume, parse_vcont, stop_reply
from hwbp.gdbserver.target import Action, Stop


def test_vcont_step_one_thread_continue_the_rest() -> None:
    assert parse_vcont(b"vCont;s:1a2b;c", current=7) == Resume(
        {0x1A2B: Action(step=True)}, Action()
    )


def test_vcont_first_action_for_a_thread_wins_and_signals_are_renumbered() -> None:
    got = parse_vcont(b"vCont;C1e:10;s:10;S0b", current=7)  # gdb's 30 is SIGUSR1 (10)
    assert got.actions == {0x10: Action(signal=10)}
    assert got.default == Action(step=True, signal=11)
    assert parse_vcont(b"vCont;c:0", current=7).actions == {7: Action()}  # 0: any thread


@pytest.mark.parametrize("bad", [b"vCont;t:1", b"vCont;r1000,2000:1", b"vCont;c5", b"vCont;Czz"])
def test_vcont_actions_we_do_not_do_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        parse_vcont(bad, current=1)


def test_stop_replies() -> None:
    assert stop_reply(Stop("signal", 0x4D2, 5, b"watch:601040;")) == b"T05watch:601040;thread:4d2;"
    assert stop_reply(Stop("signal", 0x4D2, 10)) == b"T1ethread:4d2;"  # SIGUSR1 is 30 to gdb
    assert stop_reply(Stop("exited", 0x4D2, 3)) == b"W03"
    assert stop_reply(Stop("killed", 0x4D2, 9)) == b"X09"
