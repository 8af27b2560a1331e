"""Stop strings and incremental detokenizing, without a model."""

from __future__ import annotations

from pathlib import Path

from generators.text.decoding import IncrementalDetokenizer, StopStringFilter


def feed(f: StopStringFilter, pieces: list[str]) -> str:
    out = "".join(f.push(p) for p in pieces)
    return out + ("" if f.stopped else f.flush())


def test_stop_string_split_across_chunks_is_caught_and_hidden() -> None:
    f = StopStringFilter(["\nUser:"])
    assert feed(f, ["Hello", " there\nUs", "er: more"]) == "Hello there"
    assert f.stopped


def test_text_that_only_looks_like_a_stop_prefix_is_released() -> None:
    f = StopStringFilter(["STOP"])
    shown = [f.push(p) for p in ["ab", "ST", "ar", "t"]]
    assert shown[1] == ""  # held back: could be the start of STOP
    assert "".join(shown) + f.flush() == "abSTart"
    assert not f.stopped


def test_earliest_of_several_stop_strings_wins() -> None:
    f = StopStringFilter(["END", "##"])
    assert feed(f, ["one ## two END"]) == "one "


def test_no_stop_strings_passes_through() -> None:
    f = StopStringFilter([])
    assert feed(f, ["a", "b"]) == "ab"


def test_detokenizer_never_splits_multibyte_characters(smol_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    text = "Crème brûlée 🍮 and 日本語 text, naïve café."
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(i) for i in ids]
    assert "".join(deltas) == tok.decode(ids)
    assert not any("\ufffd" in d for d in deltas)
