"""The API's count of a worker's free slots between heartbeats (api/slots.py): per job, from the heartbeat's list of
the jobs holding slots and the stamp of the latest announcement it had handled."""

from __future__ import annotations

import msgspec
from herd.api.slots import SlotView
from herd.inference import WorkerStatus


def beat(busy: tuple[str, ...] = (), announced: int = 0, total: int = 2, worker_id: str = "w") -> WorkerStatus:
    status = WorkerStatus(worker_id, ("m",), 1024, total, len(busy), 0, 0, 0, 1, "h", 0.0)
    return msgspec.structs.replace(status, announced=announced, holding=busy)


def test_a_job_sent_is_busy_until_a_heartbeat_has_handled_its_announcement() -> None:
    view = SlotView()
    view.sent("w", "a", stamp=10)
    assert view.free(beat(announced=9)) == 1  # the heartbeat predates the announcement: "a" is not in it
    view.refresh([beat(announced=9)])
    assert view.free(beat(announced=9)) == 1
    assert view.free(beat(("a",), announced=10)) == 1  # the heartbeat holds it: counted once
    view.refresh([beat(announced=10)])  # handled and not held: handed back (or over already)
    assert view.free(beat(announced=10)) == 2


def test_a_job_that_ended_here_frees_its_slot_before_the_heartbeat_says_so() -> None:
    view = SlotView()
    view.sent("w", "a", stamp=10)
    view.refresh([beat(("a",), announced=10)])
    view.ended("w", "a")
    assert view.free(beat(("a",), announced=10)) == 2  # a follow-up turn finds its worker free at once
    view.refresh([beat(("a",), announced=10)])  # still listed: the end is kept
    assert view.free(beat(("a",), announced=10)) == 2
    view.refresh([beat(announced=10)])  # no longer listed: forgotten, and not counted twice
    assert view.free(beat(("b",), announced=10)) == 1


def test_a_job_that_ended_before_any_heartbeat_saw_it_holds_nothing() -> None:
    view = SlotView()
    view.sent("w", "a", stamp=10)
    view.ended("w", "a")
    assert view.free(beat(announced=5)) == 2
    view.refresh([beat(announced=5)])  # its announcement is still to be handled: the end is kept with it
    assert view.free(beat(("a",), announced=5)) == 2
    view.refresh([beat(announced=10)])
    assert view.free(beat(announced=10)) == 2


def test_jobs_this_process_did_not_send_count_by_the_heartbeat() -> None:
    view = SlotView()  # "x" came from another API replica, or from the overflow
    view.sent("w", "a", stamp=10)
    assert view.free(beat(("x",), announced=9)) == 0
    assert view.free(beat(("x", "a"), announced=10)) == 0


def test_an_admission_under_way_counts_its_likely_worker_as_busy() -> None:
    view = SlotView()
    with view.choosing("w"), view.choosing("w"):
        assert view.free(beat()) == 0
        assert view.free(beat(worker_id="v")) == 2
    assert view.free(beat()) == 2


def test_an_older_worker_without_stamps_is_taken_at_its_heartbeat_word() -> None:
    view = SlotView()
    view.sent("w", "a", stamp=10)
    view.ended("w", "b")
    assert view.free(beat(("b",), announced=-1)) == 1
    view.refresh([beat(("b",), announced=-1)])
    assert view.free(beat(announced=0)) == 2


def test_a_worker_gone_is_forgotten() -> None:
    view = SlotView()
    view.sent("w", "a", stamp=10)
    view.ended("w", "b")
    view.refresh([beat(worker_id="v")])
    assert view.free(beat(("b",), announced=0)) == 1  # the same id back: nothing of the old counts remains
