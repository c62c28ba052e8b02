"""workers/peer_watch.py: a rank waiting on a peer that died (a collective that never returns)
ends the run itself after the grace, naming the dead rank, and writes the end only once."""

from __future__ import annotations

import subprocess
import threading
import time

import psutil

from contract.events import EVENTS_FILE, EventWriter, read_events
from contract.ranks import read_ranks, write_rank_start
from workers.peer_watch import Ending, PeerWatch
from workers.world import World


def start_file(folder, rank, proc):
    # started_at as the rank writes it: its process's start time (a reused PID is not it)
    write_rank_start(folder, rank, 2, rank, psutil.Process(proc.pid).create_time())
    # the file holds this process's pid; point it at the stand-in process
    path = folder / "ranks" / f"{rank}.json"
    path.write_text(path.read_text().replace(f'"pid": {__import__("os").getpid()}',
                                             f'"pid": {proc.pid}'))


def watch(tmp_path, rank: int):
    events = EventWriter(tmp_path / EVENTS_FILE)
    exited = threading.Event()
    codes: list[int] = []
    ending = Ending()
    world = World(rank=rank, size=2, local_rank=rank)
    w = PeerWatch(world, tmp_path, events.emit, ending, events.close, grace=0.5,
                  interval=0.05, exit=lambda code: (codes.append(code), exited.set()))
    return w, ending, exited, codes


def test_a_dead_peer_ends_the_run_after_the_grace_naming_it(tmp_path):
    me = subprocess.Popen(["sleep", "60"])  # stands for this rank in its file
    peer = subprocess.Popen(["sleep", "60"])
    try:
        start_file(tmp_path, 0, me)
        start_file(tmp_path, 1, peer)
        w, ending, exited, codes = watch(tmp_path, rank=0)
        w.start()
        time.sleep(0.3)
        assert not exited.is_set()  # a live peer blocks nobody
        peer.kill()
        peer.wait()
        assert exited.wait(10) and codes == [1]
        assert ending.ended and not ending.claim()  # the main thread writes nothing after
        events, _ = read_events(tmp_path / EVENTS_FILE)
        kinds = [e.type for e in events]
        assert kinds == ["error", "done"]
        assert events[0].data["error_type"] == "rank_died" and events[0].data["rank"] == 1
        assert events[1].data["status"] == "failed"
        mine = next(r for r in read_ranks(tmp_path) if r.rank == 0)
        assert mine.status == "failed" and mine.error["error_type"] == "distributed"
    finally:
        for p in (me, peer):
            p.kill()
            p.wait()


def test_the_main_thread_that_ends_first_keeps_the_end(tmp_path):
    me = subprocess.Popen(["sleep", "60"])
    peer = subprocess.Popen(["sleep", "60"])
    try:
        start_file(tmp_path, 1, me)
        start_file(tmp_path, 0, peer)
        w, ending, exited, codes = watch(tmp_path, rank=1)
        assert ending.claim() and ending.claim()  # the main thread's, twice
        peer.kill()
        peer.wait()
        info = w.dead_peer()
        assert info is not None and info.rank == 0
        other = threading.Thread(target=w.give_up, args=(info,))  # as the watch's thread
        other.start()
        other.join()
        assert codes == [] and not (tmp_path / "ranks" / "1.end.json").exists()
    finally:
        for p in (me, peer):
            p.kill()
            p.wait()
