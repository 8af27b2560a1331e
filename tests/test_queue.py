"""Fair use of one model: a waiting user sees their place in the queue, a full queue says 'busy' at once,
and a user over their request rate is told when to come back."""

from __future__ import annotations

import time

import pytest
from gradio_client import Client
from gradio_client.utils import Status

from tests.conftest import free_port
from webui.server import launch

SAMPLER = (0.0, 0.95, 50, 0.0, 1.0, 400, "", "")


@pytest.fixture
def busy_app(make_ctx):  # type: ignore[no-untyped-def]
    ctx = make_ctx({"slow": {"words": 400, "delay_s": 0.01}}, port=free_port(), concurrency=1, queue_size=2,
                   requests_per_minute=3)
    demo = launch(ctx, quiet=True)
    yield ctx, demo.local_url
    demo.close()


def test_place_in_queue_and_busy_when_full(busy_app) -> None:
    _, url = busy_app
    clients = [Client(url, verbose=False) for _ in range(4)]
    for i, c in enumerate(clients):
        c.predict("slow", "", f"user {i}", *SAMPLER, api_name="/send")
    jobs = [c.submit("slow", "", *SAMPLER, api_name="/reply") for c in clients]
    deadline = time.monotonic() + 20
    ranks: dict[int, int] = {}
    while time.monotonic() < deadline and len(ranks) < 1:
        for i, job in enumerate(jobs):
            st = job.status()
            if st.code == Status.IN_QUEUE and st.rank is not None:
                ranks[i] = st.rank
        time.sleep(0.05)
    assert ranks, "no waiting user was told their place in the queue"
    assert all(r < 2 for r in ranks.values()), ranks  # a place within the queue of 2 (0 = next)
    errors: dict[int, str] = {}
    for i, job in enumerate(jobs):
        try:
            job.result(timeout=60)
        except Exception as exc:  # noqa: BLE001 - collected and checked below
            errors[i] = str(exc)
    assert any("queue is full" in e.lower() or "busy" in e.lower() for e in errors.values()), errors
    assert not set(ranks) & set(errors), (ranks, errors)  # a user told a place was served, not dropped later
    assert len(errors) < len(jobs)  # the ones that got in were served


def test_rate_limit_tells_when_to_come_back(busy_app) -> None:
    ctx, url = busy_app
    client = Client(url, verbose=False)
    quick = (0.0, 0.95, 50, 0.0, 1.0, 2, "", "")
    for i in range(3):
        client.predict("slow", "", f"m{i}", *quick, api_name="/send")
        client.predict("slow", "", *quick, api_name="/reply")
    with pytest.raises(Exception, match=r"limit is 3\); try again in \d+ s"):
        client.predict("slow", "", "one too many", *quick, api_name="/send")
    from webui.services import chat

    assert all(m.content != "one too many" for c in chat.list_chats(ctx, "local")
               for m in chat.get_chat(ctx, "local", c.id).messages)  # refused before anything was saved
