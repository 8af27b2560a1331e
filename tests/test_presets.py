"""Sampler presets: built-ins, a person's own (save, rename, delete, export/import), the default preset per
model, how a preset and single values combine, isolation between two people, and the migration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from generators.base import InvalidOptionsError, SamplingParams
from storage.db import StorageError
from storage.models import Base
from webui.services import presets


@pytest.fixture
def ctx(make_ctx):  # type: ignore[no-untyped-def]
    return make_ctx({"fake": {}, "other": {}})


def test_builtins_cover_greedy_balanced_creative_and_story(ctx) -> None:  # type: ignore[no-untyped-def]
    names = [p.name for p in presets.list_presets(ctx, "ann")]
    assert names[:4] == ["Deterministic", "Balanced", "Creative", "Storywriter"]
    for p in presets.builtin_presets():
        assert set(p.params) == set(SamplingParams.model_fields)  # every sampler setting
    assert presets.get_preset(ctx, "ann", "deterministic").params["temperature"] == 0.0
    creative = presets.get_preset(ctx, "ann", "Creative").params
    assert creative["xtc_probability"] > 0 and creative["dry_multiplier"] > 0


def test_save_rename_delete_and_the_errors_people_see(ctx) -> None:  # type: ignore[no-untyped-def]
    saved = presets.save_preset(ctx, "ann", "  My   chat ", {"temperature": 0.3, "typical_p": 0.8})
    assert saved.name == "My chat" and saved.params["temperature"] == 0.3 and saved.params["top_k"] == 50
    again = presets.save_preset(ctx, "ann", "my chat", {"temperature": 0.4})  # same name: replaced
    assert again.name == "My chat" and presets.get_preset(ctx, "ann", "My chat").params["temperature"] == 0.4
    assert [p.name for p in presets.list_presets(ctx, "ann") if not p.builtin] == ["My chat"]
    with pytest.raises(InvalidOptionsError, match="built-in"):
        presets.save_preset(ctx, "ann", "balanced", {})
    with pytest.raises(InvalidOptionsError, match="name"):
        presets.save_preset(ctx, "ann", "   ", {})
    with pytest.raises(InvalidOptionsError, match="temperature"):
        presets.save_preset(ctx, "ann", "Hot", {"temperature": 9})
    with pytest.raises(InvalidOptionsError, match="not a known setting"):
        presets.save_preset(ctx, "ann", "Typo", {"temprature": 1})
    presets.save_preset(ctx, "ann", "Other", {})
    with pytest.raises(InvalidOptionsError, match="already have"):
        presets.rename_preset(ctx, "ann", "My chat", "other")
    assert presets.rename_preset(ctx, "ann", "My chat", "Calm").name == "Calm"
    with pytest.raises(InvalidOptionsError, match="Built-in"):
        presets.delete_preset(ctx, "ann", "Creative")
    presets.delete_preset(ctx, "ann", "Calm")
    with pytest.raises(InvalidOptionsError, match="no preset named 'Calm'"):
        presets.get_preset(ctx, "ann", "Calm")
    with pytest.raises(StorageError):
        presets.delete_preset(ctx, "ann", "Calm")


def test_a_preset_and_single_values_combine(ctx) -> None:  # type: ignore[no-untyped-def]
    params = presets.resolve(ctx, "ann", "Creative", {"temperature": 0.5, "top_k": None})
    assert params.temperature == 0.5 and params.xtc_probability == 0.5 and params.top_k == 0  # None = not given
    assert presets.resolve(ctx, "ann", None, {"temperature": 0.2}) == SamplingParams(temperature=0.2)
    with pytest.raises(InvalidOptionsError, match="Presets: Deterministic"):
        presets.resolve(ctx, "ann", "Nope", {})


def test_the_default_preset_per_model_follows_renames_and_deletes(ctx) -> None:  # type: ignore[no-untyped-def]
    presets.save_preset(ctx, "ann", "Mine", {"temperature": 0.1})
    presets.set_default_preset(ctx, "ann", "fake", "mine")
    presets.set_default_preset(ctx, "ann", "other", "Storywriter")
    assert presets.default_preset(ctx, "ann", "fake") == "Mine"
    assert presets.resolve(ctx, "ann", presets.MODEL_DEFAULT, {}, model="other").max_new_tokens == 200
    presets.rename_preset(ctx, "ann", "Mine", "Still mine")
    assert presets.default_preset(ctx, "ann", "fake") == "Still mine"
    presets.delete_preset(ctx, "ann", "Still mine")
    assert presets.default_preset(ctx, "ann", "fake") is None
    assert presets.resolve(ctx, "ann", presets.MODEL_DEFAULT, {}, model="fake") == SamplingParams()
    presets.set_default_preset(ctx, "ann", "other", None)
    assert presets.default_preset(ctx, "ann", "other") is None
    with pytest.raises(Exception, match="nope"):
        presets.set_default_preset(ctx, "ann", "nope", "Balanced")


def test_two_people_never_see_each_others_presets(ctx) -> None:  # type: ignore[no-untyped-def]
    presets.save_preset(ctx, "ann", "Secret", {"temperature": 0.1})
    presets.set_default_preset(ctx, "ann", "fake", "Secret")
    assert "Secret" not in [p.name for p in presets.list_presets(ctx, "bob")]
    with pytest.raises(InvalidOptionsError):
        presets.get_preset(ctx, "bob", "Secret")
    with pytest.raises(StorageError):
        presets.delete_preset(ctx, "bob", "Secret")
    assert presets.default_preset(ctx, "bob", "fake") is None
    presets.save_preset(ctx, "bob", "Secret", {"temperature": 1.5})  # the same name is bob's own
    assert presets.get_preset(ctx, "ann", "Secret").params["temperature"] == 0.1
    assert presets.export_presets(ctx, "bob")["presets"][0]["params"]["temperature"] == 1.5


def test_export_import_round_trip_all_or_nothing(ctx) -> None:  # type: ignore[no-untyped-def]
    presets.save_preset(ctx, "ann", "A", {"temperature": 0.2, "dry_sequence_breakers": ["\n", "#"]})
    presets.save_preset(ctx, "ann", "B", {"xtc_probability": 0.3})
    exported = json.dumps(presets.export_presets(ctx, "ann"))
    assert presets.import_presets(ctx, "bob", exported).names == ["A", "B"]
    assert presets.get_preset(ctx, "bob", "A").params == presets.get_preset(ctx, "ann", "A").params
    bad = json.loads(exported)
    bad["presets"].append({"name": "C", "params": {"top_p": 3}})
    with pytest.raises(InvalidOptionsError, match="top_p"):
        presets.import_presets(ctx, "carol", json.dumps(bad))
    assert [p for p in presets.list_presets(ctx, "carol") if not p.builtin] == []  # nothing stored
    for raw, words in ((b"{not json", "not valid JSON"), (b"[]", "not a presets file"),
                       (json.dumps({"format": presets.FORMAT, "presets": [{"name": "Creative", "params": {}}]}),
                        "built-in"),
                       (b"x" * (presets.MAX_IMPORT_BYTES + 1), "at most")):
        with pytest.raises(InvalidOptionsError, match=words):
            presets.import_presets(ctx, "carol", raw)


def test_migration_creates_the_tables_and_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = Config(str(Path(__file__).resolve().parents[1] / "alembic.ini"))
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parents[1] / "storage" / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "head")
    engine = create_engine(url)
    tables = {"sampler_presets", "model_presets", "instruct_templates"}
    assert tables <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diff if any(t in str(d) for t in tables)] == []
    before = ScriptDirectory.from_config(cfg).get_revision("0009").down_revision  # 0009_prompt_presets
    command.downgrade(cfg, str(before))
    assert not tables & set(inspect(engine).get_table_names())
    command.upgrade(cfg, "head")
    engine.dispose()


def test_arena_answers_start_from_the_chosen_preset(make_ctx) -> None:  # type: ignore[no-untyped-def]
    from storage import repository as repo
    from webui.services import arena

    ctx = make_ctx({"alpha": {"words": 3}, "beta": {"words": 3}})
    battle = arena.start(ctx, "ann", "Tell me a fact", "alpha", "beta")
    list(arena.stream(ctx, "ann", battle.id, {"max_new_tokens": 32}, preset="Creative"))
    with ctx.store.begin() as s:
        params = [g.params for g in repo.generations_of(s, "ann")]
    assert len(params) == 2
    for p in params:
        assert p["preset"] == "Creative" and p["max_new_tokens"] == 32
        assert p["xtc_probability"] == presets.BUILTIN["Creative"]["xtc_probability"]


def test_a_sillytavern_or_text_generation_webui_preset_imports(ctx) -> None:  # type: ignore[no-untyped-def]
    sillytavern = {"temp": 1.2, "top_p": 0, "top_k": 40, "min_p": 0.02, "typical_p": 1, "rep_pen": 1.07,
                   "presence_pen": 0.1, "freq_pen": 0.2, "dry_multiplier": 0.8, "dry_base": 1.75,
                   "dry_allowed_length": 2, "dry_sequence_breakers": "[\"\\n\", \":\"]", "xtc_threshold": 0.1,
                   "xtc_probability": 0.5, "seed": -1, "genamt": 300, "mirostat_mode": 0, "tfs": 1}
    result = presets.import_presets(ctx, "ann", json.dumps(sillytavern), name="Universal-Creative")
    assert result.names == ["Universal-Creative"] and result.ignored == ["mirostat_mode", "tfs"]
    p = presets.get_preset(ctx, "ann", "Universal-Creative").params
    assert (p["temperature"], p["top_p"], p["top_k"], p["repetition_penalty"], p["max_new_tokens"]) == (1.2, 1.0, 40, 1.07, 300)
    assert p["dry_sequence_breakers"] == ["\n", ":"] and p["seed"] is None and p["frequency_penalty"] == 0.2
    with pytest.raises(InvalidOptionsError, match="temperature"):  # beyond what the studio allows: refused
        presets.import_presets(ctx, "ann", json.dumps({"temperature": 4.0}), name="Hot")
