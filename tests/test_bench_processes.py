"""bench/scaleout.py's ProcessGroup: a fleet it starts ends with it, whether the script finishes, fails, or gets
SIGINT (Ctrl-C) or SIGTERM, grandchildren included; if the script is killed outright its direct children still get
SIGTERM from the kernel. Real processes (a child Python running the bench's own class, `sleep`s as the fleet);
membership is read from /proc, by process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 30  # bound on waits for things that happen within milliseconds

SCRIPT = f"""
import signal, sys, time
sys.path.insert(0, {str(REPO)!r})
from bench.scaleout import ProcessGroup, exit_on_sigterm

signal.signal(signal.SIGTERM, exit_on_sigterm)  # as bench.scaleout.main does
with ProcessGroup(grace_s=5) as group:
    children = [group.start(["sh", "-c", "sleep 600 & exec sleep 601"]) for _ in range(3)]
    print(group.pgid, " ".join(str(c.pid) for c in children), flush=True)
    if sys.argv[1] == "fail":
        raise RuntimeError("the bench failed")
    time.sleep(600)
"""


def members(pgid: int) -> set[int]:
    """Live processes (zombies aside) in process group pgid."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.add(int(entry))
    return found


def wait_until(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "fail", "SIGKILL"])
def test_the_fleet_ends_with_the_script(how: str) -> None:
    script = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, how], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert script.stdout is not None
    pgid_text, *pids_text = script.stdout.readline().split()
    pgid, pids = int(pgid_text), {int(p) for p in pids_text}
    try:
        assert pgid != os.getpgid(script.pid)  # the fleet has a group of its own, not the script's
        if how == "fail":
            script.wait(timeout=WAIT_S)
        else:
            wait_until(lambda: len(members(pgid)) == 6, "the fleet (3 children, 3 grandchildren) never started")
            script.send_signal(getattr(signal, how))
            script.wait(timeout=WAIT_S)
        if how == "SIGKILL":  # no clean-up ran: the kernel's parent-death signal ends the direct children
            wait_until(lambda: not (members(pgid) & pids), f"children left: {members(pgid) & pids}")
        else:
            assert members(pgid) == set(), f"left behind after {how}: {members(pgid)}"  # gone before the exit
    finally:
        for pid in members(pgid):
            os.kill(pid, signal.SIGKILL)
    _, stderr = script.communicate(timeout=WAIT_S)  # reads and closes both pipes
    if how == "fail":
        assert "the bench failed" in stderr
