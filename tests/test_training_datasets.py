"""Dataset uploads: validated in full before anything is written, hostile archives built here."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from generators.base import InvalidOptionsError
from webui.services import datasets as ds
from webui.services.datasets import DatasetLimits, check_upload

LIMITS = DatasetLimits()


def png(size: int = 8, value: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("L", (size, size), value).save(out, "PNG")
    return out.getvalue()


def zip_of(entries: dict[str, bytes], **infos: Any) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return out.getvalue()


def classes(n: int = 5) -> dict[str, bytes]:
    return {f"digits/{c}/{i}.png": png(8, 40 * int(c)) for c in ("0", "1") for i in range(n)}


def test_a_zip_of_class_folders_is_accepted_and_unwrapped() -> None:
    checked = check_upload("digits.zip", zip_of(classes()), LIMITS)
    assert checked.kind == "images"
    assert checked.summary == {"images": 10, "classes": 2, "class_names": ["0", "1"], "layout": "classes"}
    assert all(p.startswith(("images/0/", "images/1/")) for p in checked.files)


def test_a_flat_zip_is_one_class_and_junk_is_skipped() -> None:
    entries = {f"{i}.png": png() for i in range(8)} | {"__MACOSX/._0.png": b"x", ".DS_Store": b"x"}
    checked = check_upload("flat.zip", zip_of(entries), LIMITS)
    assert checked.summary["layout"] == "flat" and checked.summary["images"] == 8


@pytest.mark.parametrize(("entries", "message"), [
    ({"../evil.png": png()} | {f"{i}.png": png() for i in range(8)}, "outside its folder"),
    ({"a/../../evil.png": png()}, "outside its folder"),
    ({"/etc/evil.png": png()}, "absolute"),
    ({"c:\\evil.png": png()}, "absolute or Windows"),
    ({f"{i}.png": png() for i in range(8)} | {"run.sh": b"#!/bin/sh"}, "not an image"),
    ({f"{i}.png": b"not a png at all" for i in range(8)}, "not a readable image"),
    ({f"{i}.png": png() for i in range(3)}, "at least 8"),
    ({f"{i}.png": png() for i in range(8)} | {f"c/{i}.png": png() for i in range(8)}, "not both"),
    ({f"{i}.png": png(2000) for i in range(8)}, "at most 1024 px"),
])
def test_hostile_or_broken_archives_are_refused(entries: dict[str, bytes], message: str) -> None:
    with pytest.raises(InvalidOptionsError, match=message):
        check_upload("x.zip", zip_of(entries), LIMITS)


def test_a_zip_bomb_is_refused_from_its_directory() -> None:
    bomb = zip_of({f"{i}.png": png() for i in range(8)} | {"big.png": b"\0" * (20 * 2**20)})
    assert len(bomb) < 100_000
    with pytest.raises(InvalidOptionsError, match="inflates"):
        check_upload("bomb.zip", bomb, LIMITS)
    with pytest.raises(InvalidOptionsError, match="unpacks to"):
        check_upload("bomb.zip", bomb, DatasetLimits(max_unpacked_bytes=2**20))


def test_a_symlink_and_an_encrypted_member_are_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(InvalidOptionsError, match="symbolic link"):
        check_upload("x.zip", out.getvalue(), LIMITS)
    raw = bytearray(zip_of({"a.png": png()}))
    raw[6] |= 1  # the local header's "encrypted" flag
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 8] |= 1
    with pytest.raises(InvalidOptionsError, match="encrypted"):
        check_upload("x.zip", bytes(raw), LIMITS)


def test_a_member_larger_than_its_directory_says_is_refused() -> None:
    raw = bytearray(zip_of({f"{i}.png": png() for i in range(8)}, ))
    # lower the declared size of the first member in the central directory: the read shows the lie
    central = raw.find(b"PK\x01\x02")
    declared = int.from_bytes(raw[central + 24:central + 28], "little")
    raw[central + 24:central + 28] = (declared - 10).to_bytes(4, "little")
    with pytest.raises(InvalidOptionsError):
        check_upload("x.zip", bytes(raw), LIMITS)


def test_text_must_be_utf8_and_long_enough() -> None:
    assert check_upload("a.txt", ("é" * 300).encode(), LIMITS).summary["characters"] == 300
    with pytest.raises(InvalidOptionsError, match="not UTF-8 .line 2"):
        check_upload("a.txt", b"x" * 300 + b"\nabc\xe9def", LIMITS)
    with pytest.raises(InvalidOptionsError, match="at least 200"):
        check_upload("a.txt", b"short", LIMITS)
    with pytest.raises(InvalidOptionsError, match="NUL"):
        check_upload("a.txt", b"x" * 300 + b"\0", LIMITS)
    with pytest.raises(InvalidOptionsError, match="at most 1 MB"):
        check_upload("a.txt", b"x" * (2 * 2**20), DatasetLimits(max_bytes=2**20))
    with pytest.raises(InvalidOptionsError, match="Unknown dataset type"):
        check_upload("a.exe", b"MZ" * 200, LIMITS)


def chat(user: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


def test_chat_jsonl_is_checked_line_by_line() -> None:
    checked = check_upload("c.jsonl", "\n".join([chat("a", "b"), chat("c", "d")]).encode(), LIMITS)
    assert checked.summary == {"conversations": 2, "messages": 4}
    with pytest.raises(InvalidOptionsError, match="Line 2 is not valid JSON"):
        check_upload("c.jsonl", (chat("a", "b") + "\n{oops").encode(), LIMITS)
    with pytest.raises(InvalidOptionsError, match="Line 1, message 1: each message needs a role"):
        check_upload("c.jsonl", b'{"messages": [{"role": "robot", "content": "x"}]}\n' + chat("a", "b").encode(), LIMITS)
    with pytest.raises(InvalidOptionsError, match="at least one non-empty assistant"):
        check_upload("c.jsonl", b'{"messages": [{"role": "user", "content": "x"}]}', LIMITS)


def test_stored_per_owner_private_listed_and_deleted(make_ctx: Any) -> None:
    ctx = make_ctx()
    row = ds.add_dataset(ctx, "ann", "digits.zip", zip_of(classes()))
    folder = ds.dataset_folder(ctx, row)
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["0", "1"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.rglob("*.png"))
    assert [d.id for d in ds.list_datasets(ctx, "ann")] == [row.id] and ds.list_datasets(ctx, "bob") == []
    with pytest.raises(Exception, match="No such dataset"):
        ds.delete_dataset(ctx, "bob", row.id)
    ds.delete_dataset(ctx, "ann", row.id)
    assert not folder.exists() and ds.list_datasets(ctx, "ann") == []


def test_a_refused_upload_writes_nothing(make_ctx: Any) -> None:
    ctx = make_ctx()
    with pytest.raises(InvalidOptionsError):
        ds.add_dataset(ctx, "ann", "x.zip", zip_of({"../evil.png": png()}))
    training = Path(ctx.store.data_dir) / "training"
    assert not list(training.rglob("*.png")) and ds.list_datasets(ctx, "ann") == []
