"""Build the training text of the default char-LSTM from the Debian ``fortunes`` package.

    apt-get install -y fortunes
    python -m generators.text.fortunes_corpus --out runs/fortunes.txt

Reads every plain-text fortune file in ``/usr/share/games/fortunes`` (the ``.dat`` indexes and
the ``.u8`` symlinks are skipped, and so is ``ascii-art``: pictures, not prose), splits it at
the ``%`` separator lines, cleans each fortune (terminal overstrike ``X<BS>`` sequences are
removed, trailing spaces stripped, fortunes with non-printable characters such as bells or
mis-encoded bytes are dropped) and writes them separated by one blank line. The fortunes are
shuffled with a fixed seed so that the contiguous last 10 % that ``train_rnn`` holds out for
validation is a fair sample of every file rather than the alphabetically last ones. The same
package version gives the same file, byte for byte.
"""
from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
EXCLUDED = frozenset({"ascii-art"})
_OVERSTRIKE = re.compile(r".\x08", re.DOTALL)


def fortune_files(folder: Path = FORTUNES_DIR) -> list[Path]:
    """The plain-text fortune files of ``folder``, sorted by name."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; install the fortunes package (apt-get install -y fortunes)")
    files = [p for p in sorted(folder.iterdir())
             if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8") and p.name not in EXCLUDED]
    if not files:
        raise FileNotFoundError(f"{folder} holds no fortune files")
    return files


def split_fortunes(text: str) -> list[str]:
    """One file's fortunes, cleaned; the ones with non-printable characters are dropped."""
    fortunes = []
    for block in re.split(r"^%[ \t]*$", text, flags=re.MULTILINE):
        block = _OVERSTRIKE.sub("", block)
        lines = [line.rstrip() for line in block.strip("\n").split("\n")]
        fortune = "\n".join(lines).strip("\n")
        if fortune and all(ch.isprintable() or ch in "\n\t" for ch in fortune):
            fortunes.append(fortune)
    return fortunes


def build_corpus(folder: Path = FORTUNES_DIR, seed: int = 0) -> str:
    fortunes: list[str] = []
    for path in fortune_files(folder):
        fortunes += split_fortunes(path.read_text(encoding="utf-8"))
    random.Random(seed).shuffle(fortunes)
    return "\n\n".join(fortunes) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m generators.text.fortunes_corpus", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the UTF-8 text file to write")
    parser.add_argument("--dir", type=Path, default=FORTUNES_DIR, help="folder of fortune files")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    args = parser.parse_args(argv)
    text = build_corpus(args.dir, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {len(text):,} characters ({len(set(text))} distinct) to {args.out}")


if __name__ == "__main__":
    main()
