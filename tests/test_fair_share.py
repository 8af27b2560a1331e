"""Fair share at a model: waiting requests are served round-robin across owners, so one person's five
long streams cannot keep another's short request waiting behind all of them."""

from __future__ import annotations

import threading
import time

from generators.base import ChatMessage, SamplingParams, TextRequest
from generators.fair import FairSlots
from webui.services.generation import stream_text


def wait_until(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def test_slots_go_round_robin_across_owners_and_in_order_within_one() -> None:
    slots = FairSlots(1)
    assert slots.acquire("ann")
    order: list[str] = []
    threads = []

    def ask(who: str) -> None:
        assert slots.acquire(who, timeout=30)
        order.append(who)
        slots.release()

    for who in ["ann1", "ann2", "ann3"]:
        t = threading.Thread(target=ask, args=("ann",), name=who)
        threads.append(t)
        t.start()
        wait_until(lambda n=len(threads): slots.waiting().get("ann") == n)
    for who in ["bob", "cy"]:
        t = threading.Thread(target=ask, args=(who,))
        threads.append(t)
        t.start()
        wait_until(lambda w=who: w in slots.waiting())
    slots.release()
    for t in threads:
        t.join(30)
    assert order == ["bob", "cy", "ann", "ann", "ann"]  # ann was served last (she held the slot)


def test_a_timed_out_waiter_leaves_the_queue() -> None:
    slots = FairSlots(1)
    assert slots.acquire("ann")
    assert not slots.acquire("bob", timeout=0.05)
    assert slots.waiting() == {}
    slots.release()
    assert slots.acquire("bob", timeout=1)


def test_five_long_streams_versus_one_short_request(make_ctx) -> None:
    ctx = make_ctx({"shared": {"words": 40, "delay_s": 0.01}})
    slots = ctx.registry._slot("shared").semaphore
    finished: list[str] = []

    def run(owner: str, tokens: int) -> None:
        request = TextRequest(messages=(ChatMessage("user", "hi"),), params=SamplingParams(max_new_tokens=tokens))
        for _delta, _result in stream_text(ctx, owner, "shared", request, source="api"):
            pass
        finished.append(owner)

    threads = [threading.Thread(target=run, args=("ann", 40)) for _ in range(5)]
    for i, t in enumerate(threads):
        t.start()
        if i == 0:
            wait_until(lambda: slots.in_use == 1)
    wait_until(lambda: slots.waiting().get("ann") == 4)
    bob = threading.Thread(target=run, args=("bob", 4))
    bob.start()
    wait_until(lambda: "bob" in slots.waiting() or "bob" in finished)
    for t in [*threads, bob]:
        t.join(60)
    # bob's 4-token request runs right after ann's running stream, not after all five (FIFO: 6th)
    assert finished.index("bob") == 1, finished
