"""Two users on one studio: nobody reaches another's chats, stories or images through the page, the
Gradio API with crafted ids, the HTTP API or file URLs; failures of one generation leave the app serving."""

from __future__ import annotations

import httpx
import pytest
from gradio_client import Client

from tests.conftest import free_port
from webui.server import launch
from webui.services import chat as chat_svc
from webui.services import images as image_svc
from webui.services import story as story_svc
from webui.services.accounts import Accounts

SAMPLER = (0.0, 0.95, 50, 0.0, 1.0, 64, "", "")


@pytest.fixture
def two_users(make_ctx):  # type: ignore[no-untyped-def]
    ctx = make_ctx({"quick": {"words": 5}, "broken": {"words": 50, "fail_after": 2, "fail_kind": "oom"}},
                   images=True, port=free_port())
    accounts = Accounts(ctx.settings.users_path)
    keys = {"ann": accounts.add("ann", "ann-password"), "bob": accounts.add("bob", "bob-password")}
    demo = launch(ctx, quiet=True)
    clients = {name: Client(demo.local_url, auth=(name, f"{name}-password"), verbose=False) for name in keys}
    yield ctx, demo.local_url.rstrip("/"), clients, keys
    demo.close()


def test_the_page_needs_a_login(two_users) -> None:
    _, url, _, _ = two_users
    with pytest.raises(Exception, match="(?i)login|auth|401|403|credentials"):
        Client(url, verbose=False)
    with pytest.raises(Exception, match="(?i)login|auth|401|403|credentials|incorrect"):
        Client(url, auth=("ann", "bob-password"), verbose=False)
    assert httpx.get(f"{url}/gradio_api/info").status_code in (401, 403)


def test_each_user_sees_only_their_own_work_through_every_path(two_users) -> None:
    ctx, url, clients, keys = two_users
    ann, bob = clients["ann"], clients["bob"]
    # ann makes a chat, a story and images through the page
    ann.predict("quick", "", "ann's secret plan", *SAMPLER, api_name="/send")
    ann.predict("quick", "", *SAMPLER, api_name="/reply")
    ann_chat = chat_svc.list_chats(ctx, "ann")[0].id
    from webui.services.story_values import story_settings

    ann_story = story_svc.create_story(ctx, "ann", "ann's novel", story_settings(ctx, "quick", {}), "Once").id
    ann.predict("gan-mnist32", "4", "1", 2, 0.0, 1.0, api_name="/generate_images")
    ann_image = image_svc.gallery(ctx, "ann").images[0].id
    assert chat_svc.list_chats(ctx, "bob") == [] and image_svc.gallery(ctx, "bob").total == 0

    # the page: bob's lists are empty; ann's ids, sent by a crafted client, are refused
    assert bob.predict("", api_name="/list_chats")["choices"] == []
    assert bob.predict("gan-mnist32", "all", 1, api_name="/gallery_page")[0] == []
    for api_name, arg in [("/open_chat", ann_chat), ("/gallery_open", ann_image), ("/gallery_rerun", ann_image),
                          ("/gallery_delete", ann_image), ("/open_story", ann_story)]:
        args = (arg, "") if api_name == "/open_story" else (arg,)
        with pytest.raises(Exception, match="does not exist|not found|deleted"):
            bob.predict(*args, api_name=api_name)
    # the HTTP API with bob's key: 404 for ann's things, empty lists; no key: 401
    bob_h, ann_h = {"Authorization": f"Bearer {keys['bob']}"}, {"Authorization": f"Bearer {keys['ann']}"}
    for path in (f"/api/chats/{ann_chat}", f"/api/images/{ann_image}", f"/api/images/{ann_image}.png",
                 f"/api/stories/{ann_story}"):
        assert httpx.get(url + path, headers=bob_h).status_code == 404, path
        assert httpx.get(url + path).status_code == 401, path
        assert httpx.get(url + path, headers=ann_h).status_code == 200, path
    assert httpx.get(f"{url}/api/chats", headers=bob_h).json()["data"] == []
    assert httpx.get(f"{url}/api/images", headers=bob_h).json()["total"] == 0
    assert httpx.delete(f"{url}/api/images/{ann_image}", headers=bob_h).status_code == 404
    assert httpx.get(f"{url}/v1/models").status_code == 401
    # the data folder is not served: neither by its path nor through Gradio's file route
    png = ctx.store.data_dir / "images" / f"{ann_image}.png"
    with httpx.Client(base_url=url) as browser:  # bob, logged in through the login form
        assert browser.post("/login", data={"username": "bob", "password": "bob-password"}).status_code == 200
        assert browser.get("/gradio_api/info").status_code == 200
        for path in (f"/gradio_api/file={png}", f"/file={png}", f"/gradio_api/file=data/images/{ann_image}.png"):
            assert browser.get(path).status_code in (403, 404), path
    # and everything of ann's is still there
    assert image_svc.get_image(ctx, "ann", ann_image).path.is_file()
    assert chat_svc.get_chat(ctx, "ann", ann_chat).messages[0].content == "ann's secret plan"


def test_a_model_that_runs_out_of_memory_gives_a_message_and_the_app_keeps_serving(two_users) -> None:
    ctx, _, clients, _ = two_users
    ann, bob = clients["ann"], clients["bob"]
    ann.predict("broken", "", "this will fail", *SAMPLER, api_name="/send")
    with pytest.raises(Exception, match="ran out of memory.*unloaded"):
        ann.predict("broken", "", *SAMPLER, api_name="/reply")
    assert not ctx.registry.get("broken").loaded  # unloaded, so it can load again cleanly
    bob.predict("quick", "", "still there?", *SAMPLER, api_name="/send")
    chatbot, _, _ = bob.predict("quick", "", *SAMPLER, api_name="/reply")
    assert "still there?" in str(chatbot[-1]["content"]) or "w0(" in str(chatbot[-1]["content"])
    # the failed reply is recorded with its reason; the model reloads on the next request
    from sqlalchemy import select

    from storage.models import Generation

    with ctx.store.begin() as s:
        failed = s.scalars(select(Generation).where(Generation.generator == "broken")).one()
        assert failed.outcome == "error" and "out of memory" in failed.error
    ann.predict("broken", "", "again", *SAMPLER, api_name="/send")
    with pytest.raises(Exception, match="ran out of memory"):
        ann.predict("broken", "", *SAMPLER, api_name="/reply")
