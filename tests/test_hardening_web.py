"""Two users on one studio over loopback: login floods are throttled and checked off the event loop,
removed users and changed passwords lose their sessions and keys at once, a browser session id
works only for its own login, and request bodies have size and depth limits on every route."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from gradio_client import Client

from tests.conftest import free_port
from webui.guard import json_depth_exceeds
from webui.server import launch
from webui.services.accounts import Accounts
from webui.services.login_throttle import LoginRefused, LoginThrottle


@pytest.fixture
def studio(make_ctx):  # type: ignore[no-untyped-def]
    ctx = make_ctx({"quick": {"words": 5}, "slow": {"words": 400, "delay_s": 0.05}}, port=free_port())
    ctx.logins = LoginThrottle(clock=lambda: 1000.0, tarpit_s=0)  # time stands still: a delay never runs out by itself
    accounts = Accounts(ctx.settings.users_path)
    keys = {"ann": accounts.add("ann", "ann-password"), "bob": accounts.add("bob", "bob-password")}
    demo = launch(ctx, quiet=True)
    yield ctx, demo.local_url.rstrip("/"), keys
    demo.close()


def login(url: str, name: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    r = client.post("/login", data={"username": name, "password": password})
    assert r.status_code == 200, r.text
    return client


# ------------------------------------------------------------------ logins


def test_throttle_grows_per_address_and_per_account() -> None:
    now = [0.0]
    t = LoginThrottle(free_failures=2, first_delay_s=1, address_max_s=8, account_max_s=4, clock=lambda: now[0])
    for _ in range(2):
        t.check("1.1.1.1", "ann")
        t.failed("1.1.1.1", "ann")
    t.check("1.1.1.1", "ann")  # two mistakes are free
    waits = []
    for _ in range(5):
        t.failed("1.1.1.1", "ann")
        with pytest.raises(LoginRefused, match="from your address") as info:
            t.check("1.1.1.1", "ann")
        waits.append(info.value.retry_after_s)
        now[0] += info.value.retry_after_s
    assert waits == [1, 2, 4, 8, 8]  # doubling, capped
    # the account is limited for other addresses too, with its lower cap
    with pytest.raises(LoginRefused, match="for this account") as info:
        t.failed("2.2.2.2", "ann")
        t.check("2.2.2.2", "ann")
    assert info.value.retry_after_s <= 4
    t.check("2.2.2.2", "bob")  # another account from a clean address is not affected
    t.succeeded("ann")
    now[0] += 100
    t.check("3.3.3.3", "ann")


def test_a_login_flood_is_refused_cheaply_with_a_clear_message(studio, monkeypatch) -> None:
    ctx, url, _ = studio
    checks = []
    real = ctx.accounts.verify_password
    monkeypatch.setattr(ctx.accounts, "verify_password", lambda n, p: checks.append(n) or real(n, p))
    statuses = []
    for _ in range(10):
        r = httpx.post(f"{url}/login", data={"username": "ann", "password": "wrong"})
        statuses.append(r.status_code)
    assert statuses[:3] == [400, 400, 400] and set(statuses[4:]) == {429}
    assert len(checks) <= 4  # refused tries hash nothing
    body = r.json()
    assert "Too many failed logins" in body["error"]["message"] and int(r.headers["retry-after"]) >= 1
    # even the right password waits out the delay (that is what stops guessing)
    assert httpx.post(f"{url}/login", data={"username": "ann", "password": "ann-password"}).status_code == 429
    # bob, from another address (a forwarding proxy says so), is not locked out by ann's flood
    r = httpx.post(f"{url}/login", data={"username": "bob", "password": "bob-password"},
                   headers={"X-Forwarded-For": "198.51.100.9"})
    assert r.status_code == 200


def test_the_password_check_runs_off_the_event_loop(studio, monkeypatch) -> None:
    ctx, url, keys = studio
    release = threading.Event()
    entered = threading.Event()

    def slow_check(name: str, password: str) -> bool:
        entered.set()
        release.wait(30)
        return False

    monkeypatch.setattr(ctx.accounts, "verify_password", slow_check)
    pending = threading.Thread(target=lambda: httpx.post(f"{url}/login", data={"username": "ann", "password": "x"},
                                                         timeout=60))
    pending.start()
    assert entered.wait(30)
    # while a password check is in progress, the server still answers (a blocked loop would time out)
    r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {keys['bob']}"}, timeout=10)
    assert r.status_code == 200
    release.set()
    pending.join(30)


# ------------------------------------------------------------------ revocation


def test_removing_a_user_ends_their_sessions_and_keys_at_once(studio) -> None:
    ctx, url, keys = studio
    ann = login(url, "ann", "ann-password")
    assert ann.get("/gradio_api/info").status_code == 200
    auth = {"Authorization": f"Bearer {keys['ann']}"}
    assert httpx.get(f"{url}/v1/models", headers=auth).status_code == 200
    Accounts(ctx.settings.users_path).remove("ann")  # as `launch.py users remove ann` does, from outside
    assert ann.get("/gradio_api/info").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers=auth).status_code == 401
    bob = login(url, "bob", "bob-password")
    assert bob.get("/gradio_api/info").status_code == 200  # others are untouched


def test_a_login_as_the_browser_sends_it_stays_logged_in(studio) -> None:
    """The login page posts a multipart form (FormData): the login must be recorded, not ended at the next request."""
    _, url, _ = studio
    client = httpx.Client(base_url=url, timeout=30)
    r = client.post("/login", files={"username": (None, "ann"), "password": (None, "ann-password")})
    assert r.status_code == 200, r.text
    assert r.request.headers["content-type"].startswith("multipart/form-data")
    assert client.get("/gradio_api/info").status_code == 200
    assert client.get("/gradio_api/info").status_code == 200  # and still at the next request
    wrong = httpx.post(f"{url}/login", files={"username": (None, "bob"), "password": (None, "nope")})
    assert wrong.status_code == 400


def test_a_removed_users_running_api_stream_is_stopped(studio) -> None:
    """Revoking a user's keys also ends the generation their key is streaming now, not only later requests."""
    ctx, url, keys = studio
    body = {"model": "slow", "messages": [{"role": "user", "content": "a long one"}], "stream": True, "max_tokens": 400}
    words, removed = 0, False
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {keys['ann']}"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                words += sum(len(c["delta"].get("content", "").split()) for c in json.loads(line[6:])["choices"])
            if words >= 5 and not removed:
                Accounts(ctx.settings.users_path).remove("ann")  # as `launch.py users remove ann` does
                removed = True
    assert 5 <= words < 200  # stopped within the sweep's second (400 words would take 20 s)
    assert ctx.sessions is not None and not ctx.sessions._api  # the watch ended with the request


def test_changing_a_password_ends_sessions_and_revokes_keys(studio) -> None:
    ctx, url, keys = studio
    ann = login(url, "ann", "ann-password")
    Accounts(ctx.settings.users_path).set_password("ann", "a new password")
    assert ann.get("/gradio_api/info").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {keys['ann']}"}).status_code == 401
    again = login(url, "ann", "a new password")
    assert again.get("/gradio_api/info").status_code == 200


def test_a_removed_users_running_reply_is_stopped(studio) -> None:
    ctx, url, _ = studio
    ann = Client(url, auth=("ann", "ann-password"), verbose=False)
    sampler = (0.0, 0.95, 50, 0.0, 1.0, 400, "", "")
    ann.predict("slow", "", "a long one", *sampler, api_name="/send")
    job = ann.submit("slow", "", *sampler, api_name="/reply")
    deadline = time.monotonic() + 60
    while not job.outputs() and time.monotonic() < deadline:
        time.sleep(0.05)
    Accounts(ctx.settings.users_path).remove("ann")
    deadline = time.monotonic() + 60
    from webui.services import chat as chat_svc

    while time.monotonic() < deadline:
        msgs = chat_svc.get_chat(ctx, "ann", chat_svc.list_chats(ctx, "ann")[0].id).messages
        if msgs[-1].status != "streaming":
            break
        time.sleep(0.2)
    assert msgs[-1].status == "cancelled" and len(msgs[-1].content.split()) < 400


# ------------------------------------------------------------------ sessions bound to their login


def test_a_session_id_works_only_for_its_own_login(studio) -> None:
    ctx, url, _ = studio
    ann = Client(url, auth=("ann", "ann-password"), verbose=False)
    ann.predict("", api_name="/list_chats")  # ann's session is now known
    sid = ann.session_hash
    bob = login(url, "bob", "bob-password")
    join = {"data": [], "fn_index": 0, "session_hash": sid, "event_data": None, "trigger_id": None}
    for method, path, kwargs in [
        ("POST", "/gradio_api/queue/join", {"json": join}),
        ("POST", "/gradio_api/cancel", {"json": {"session_hash": sid, "fn_index": 0, "event_id": "x"}}),
        ("GET", "/gradio_api/deep_link", {"params": {"session_hash": sid}}),
        ("GET", "/gradio_api/queue/data", {"params": {"session_hash": sid}}),
        ("GET", f"/gradio_api/heartbeat/{sid}", {}),
    ]:
        r = bob.request(method, path, **kwargs)
        assert r.status_code == 403, (path, r.status_code, r.text[:200])
        assert "belongs to another login" in r.json()["error"]["message"]
    # with no login at all, a session id is refused too (Gradio's own /cancel does not ask for one)
    r = httpx.post(f"{url}/gradio_api/cancel", json={"session_hash": sid, "fn_index": 0, "event_id": "x"})
    assert r.status_code == 401
    # ann's own session keeps working, and a Stop with her session id by bob's client is refused
    assert ann.predict("", api_name="/list_chats")
    thief = Client(url, auth=("bob", "bob-password"), verbose=False)
    thief.session_hash = sid
    with pytest.raises(Exception):  # noqa: B017 - the client surfaces the 403 in its own way
        thief.predict(api_name="/stop")


# ------------------------------------------------------------------ body limits


def test_json_depth_scanner() -> None:
    assert not json_depth_exceeds(b'{"a": [1, {"b": "[[[[[["}]}', 3)
    assert json_depth_exceeds(b"[" * 5 + b"]" * 5, 4)
    assert not json_depth_exceeds(b'"\\"[[[["', 1)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/images", "/gradio_api/queue/join", "/gradio_api/run/send",
                                  "/some/route/added/later"])
def test_every_route_refuses_huge_and_deep_bodies(studio, path: str) -> None:
    ctx, url, keys = studio
    client = login(url, "ann", "ann-password")
    headers = {"Authorization": f"Bearer {keys['ann']}", "Content-Type": "application/json"}
    huge = b'{"model": "quick", "messages": [{"role": "user", "content": "' + b"x" * (9 * 2**20) + b'"}]}'
    r = client.post(path, content=huge, headers=headers)
    assert r.status_code == 413
    assert "at most 8.0 MB" in r.json()["error"]["message"] and r.json()["error"]["code"] == "request_too_large"
    # the same without a Content-Length (chunked): counted while it arrives
    r = client.post(path, content=iter([huge[i:i + 2**20] for i in range(0, len(huge), 2**20)]), headers=headers)
    assert r.status_code == 413
    deep = json.dumps({"model": "quick", "messages": []})[:-1] + ', "x": ' + "[" * 1500 + "]" * 1500 + "}"
    r = client.post(path, content=deep, headers=headers)
    assert r.status_code == 400 and "nests more than 64 levels" in r.json()["error"]["message"]


# ------------------------------------------------------------------ the admin role


def test_roles_first_user_is_admin_and_the_command_changes_it(tmp_path) -> None:
    import json as _json

    accounts = Accounts(tmp_path / "users.json")
    accounts.add("ann", "ann-password")
    accounts.add("bob", "bob-password")
    assert accounts.is_admin("ann") and not accounts.is_admin("bob")
    with pytest.raises(Exception, match="only admin"):
        accounts.set_role("ann", "user")
    accounts.set_role("bob", "admin")
    accounts.set_role("ann", "user")
    assert accounts.is_admin("bob") and not accounts.is_admin("ann")
    # a users file from before roles: its oldest user administers
    data = _json.loads(accounts.path.read_text())
    for u in data["users"].values():
        u.pop("role")
    accounts.path.write_text(_json.dumps(data))
    assert Accounts(accounts.path).is_admin("ann") and not Accounts(accounts.path).is_admin("bob")


def test_only_an_admin_changes_the_shared_models_others_see_them_read_only(studio) -> None:
    ctx, url, _ = studio
    bob = Client(url, auth=("bob", "bob-password"), verbose=False)
    for api_name, args in [("/load_model", ("quick",)), ("/unload_model", ("quick",)),
                           ("/configure_model", ("quick", "none", "cuda")), ("/run_metrics", (["quick"], "bits_per_char"))]:
        with pytest.raises(Exception, match="Only an admin"):
            bob.predict(*args, api_name=api_name)
    assert not ctx.registry.get("quick").loaded and ctx.registry.get("quick").options.model_dump().get("device") != "cuda"
    assert bob.predict(api_name="/list_models")  # the state stays readable
    ann = Client(url, auth=("ann", "ann-password"), verbose=False)
    ann.predict("quick", api_name="/load_model")
    assert ctx.registry.get("quick").loaded
    ann.predict("quick", api_name="/unload_model")
    assert not ctx.registry.get("quick").loaded


def test_without_accounts_the_local_user_is_admin(make_ctx) -> None:
    ctx = make_ctx()
    assert ctx.is_admin("local")
    ctx.require_admin("local")


# ------------------------------------------------------------------ served caches


def test_a_deleted_image_is_gone_from_every_served_cache_and_the_cache_is_private(make_ctx) -> None:
    import os
    import stat

    from webui.services import images as image_svc

    ctx = make_ctx(images=True, port=free_port())
    Accounts(ctx.settings.users_path).add("ann", "ann-password")
    Accounts(ctx.settings.users_path).add("bob", "bob-password")
    demo = launch(ctx, quiet=True)
    try:
        url = demo.local_url.rstrip("/")
        ann = Client(url, auth=("ann", "ann-password"), verbose=False, download_files=False)
        gallery, grid, *_ = ann.predict("gan-mnist32", "4", "1", 2, 0.0, 1.0, api_name="/generate_images")
        served = [item["image"]["path"] for item in gallery]
        grid = grid["path"] if isinstance(grid, dict) else grid  # the batch's grid, which shows both images
        cache = ctx.settings.data_dir / "cache" / "served"
        assert all(str(cache) in p for p in served)
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700 and os.environ["GRADIO_TEMP_DIR"] == str(cache)
        bob = login(url, "bob", "bob-password")  # any logged-in user who learns the URL
        assert bob.get(f"/gradio_api/file={served[0]}").status_code == 200
        image_id = image_svc.gallery(ctx, "ann").images[-1].id
        path = image_svc.get_image(ctx, "ann", image_id).path
        copy = next(p for p in served if p.endswith(path.name))
        assert os.path.exists(grid) and str(cache) in grid
        ann.predict(image_id, api_name="/gallery_delete")
        assert not path.exists() and not os.path.exists(copy)
        assert bob.get(f"/gradio_api/file={copy}").status_code in (403, 404)
        assert not os.path.exists(grid)  # the grid showed the deleted image: gone too
        assert bob.get(f"/gradio_api/file={grid}").status_code in (403, 404)
    finally:
        demo.close()


def test_served_files_sweep_old_entries_and_clean_at_start(tmp_path) -> None:
    import os
    import time as _time

    from webui.cache import ServedFiles

    served = ServedFiles(tmp_path / "served", max_age_s=60)
    old, new = served.root / "old", served.root / "new"
    old.mkdir()
    new.mkdir()
    os.utime(old, (_time.time() - 120, _time.time() - 120))
    assert served.sweep() == 1 and not old.exists() and new.exists()
    served.clean()
    assert list(served.root.iterdir()) == []
