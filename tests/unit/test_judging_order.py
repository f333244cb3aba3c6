"""services/judging.py's order and hand-over, as plain data: a judge votes labelled pairs first, then the pairs
whose outputs exist in the run's random order (a pair made later takes its place by rank); the hand-over from
generation wakes a waiting judge and says when no more pairs will come."""

from __future__ import annotations

import threading
import time

from tiebreak.services.judging import JudgeQueue, ReadyPairs


def test_random_order_restricted_to_the_pairs_that_exist():
    rank = {10: 0, 11: 1, 12: 2, 13: 3, 14: 4}       # pair index -> place in the run's random order
    q = JudgeQueue(rank)
    q.offer([13, 11])
    assert q.next_batch(1) == [11]
    q.offer([10, 14])                                  # made later, but ahead of 13 in the order
    assert q.next_batch(2) == [10, 13]
    assert q.next_batch(5) == [14]
    assert q.next_batch(5) == [] and q.done()
    q.offer([12, 11])                                  # 11 was handed out already: once only
    assert q.next_batch(5) == [12]


def test_labelled_pairs_go_first_and_wait_for_their_outputs():
    q = JudgeQueue({i: i for i in range(8)})
    q.offer(range(6))
    q.labelled([5, 7, 4, 99])          # 7 has no outputs yet; 99 is not this judge's (voted before a restart)
    assert q.next_batch(1) == [5]
    assert q.next_batch(3) == [4, 0, 1]
    q.offer([7])
    assert q.next_batch(2) == [7, 2]   # the labelled pair, as soon as it exists
    q.labelled([2, 3])                 # 2 was voted already; 3 jumps the queue
    assert q.next_batch(4) == [3]
    assert q.next_batch(4) == []


def test_the_same_pairs_in_the_same_order_whatever_the_batch_size():
    rank = {i: (7 * i) % 11 for i in range(11)}
    order = sorted(rank, key=rank.get)
    for k in (1, 3, 4, 11):
        q = JudgeQueue(rank)
        q.offer(range(11))
        got = []
        while batch := q.next_batch(k):
            got += batch
        assert got == order


def test_ready_pairs_wakes_a_waiting_judge_and_closes():
    feed = ReadyPairs()
    assert feed.since(0) == ([], False)
    got: list = []

    def judge() -> None:
        got.append(feed.since(0, wait_s=10.0))

    t = threading.Thread(target=judge)
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    feed.put([4, 2])
    t.join(5)
    assert got == [([4, 2], False)] and time.monotonic() - t0 < 2.0
    assert feed.since(1) == ([2], False)
    feed.close()
    t0 = time.monotonic()
    assert feed.since(2, wait_s=10.0) == ([], True) and time.monotonic() - t0 < 1.0   # no wait once closed


def test_a_judge_held_to_its_room_still_votes_every_labelled_pair():
    """Pay as you go: ``room`` bounds the whole batch, but a labelled pair is never held back (its vote is what
    measures the judge); ``held`` says that pairs wait for room, not that none are left."""
    q = JudgeQueue({i: i for i in range(10)})
    q.offer(range(10))
    assert q.next_batch(4, room=2) == [0, 1]
    assert q.next_batch(4, room=0) == [] and q.held()
    q.labelled([7, 8, 9])
    assert q.next_batch(4, room=1) == [7, 8, 9]         # every labelled pair, whatever the room
    assert q.next_batch(4, room=3) == [2, 3, 4]
    assert q.next_batch(4, room=None) == [5, 6]
    assert q.next_batch(4, room=0) == [] and not q.held() and q.done()
