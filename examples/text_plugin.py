"""A text plugin to copy: a word-level Markov chain, learned at load from a text file.

Keep the shape: load options, `info` declaring the capabilities you keep, `_load`/`_unload`, and
`_stream_chunks`, which reports to the `StreamClock` and yields `TextChunk`s, the last one with its
`finish_reason`; the contract (`TextGenerator.stream`) adds timing and stats. Register it in pyproject.toml
(`[project.entry-points."aigc_studio.generators"]` `example-markov = "my_package.text_plugin:MarkovText"`),
name a model for it in the studio's config, and tests/test_plugin_contract.py checks what it declares.
"""

from __future__ import annotations

import random
import secrets
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from generators import base
from generators.text.decoding import StopStringFilter

VERSE = "the sea is calm tonight the tide is full the moon lies fair upon the straits the light gleams and is gone"


class MarkovOptions(base.StrictModel):
    corpus: str = Field("", description="a UTF-8 text file to learn from (empty: a line of verse)")


class MarkovText(base.TextGenerator):
    info = base.GeneratorInfo(
        plugin="example-markov", modality="text", family="markov-chain",
        description="word-level Markov chain learned from a text file (an example plugin)",
        capabilities=frozenset({base.CAP_STREAM, base.CAP_COMPLETION, base.CAP_CANCEL, base.CAP_SEED}),
        params=base.SamplingParams, load_options=MarkovOptions)

    def _load(self, progress: base.ProgressFn) -> None:
        try:
            text = Path(self.options.corpus).read_text(encoding="utf-8") if self.options.corpus else VERSE
        except (OSError, UnicodeDecodeError) as exc:
            raise base.LoadFailedError(f"Cannot read the corpus {self.options.corpus!r}: {exc}") from exc
        words = text.split()
        if len(words) < 2:
            raise base.LoadFailedError(f"The corpus {self.options.corpus!r} needs at least two words.")
        progress(f"Counting the {len(words):,} words of the corpus…")
        self.follows: dict[str, Counter[str]] = defaultdict(Counter)  # word → the words after it, with counts
        for word, after in zip(words, words[1:], strict=False):
            self.follows[word][after] += 1

    def _unload(self) -> None:
        self.follows.clear()

    def _stream_chunks(self, request: base.TextRequest, cancel: threading.Event | None,
                       clock: base.StreamClock) -> Iterator[base.TextChunk]:
        if request.prompt is None:
            raise base.InvalidOptionsError(f"{self.name} continues text; send a prompt, not chat messages.")
        params = request.params
        seed = params.seed if params.seed is not None else secrets.randbits(32)
        rng, stops, context = random.Random(seed), StopStringFilter(params.stop), request.prompt.split()
        clock.begin(len(context), seed)
        word = context[-1] if context else ""
        for _ in range(params.max_new_tokens):
            if cancel is not None and cancel.is_set():  # checked before every word: stops within one step
                yield base.TextChunk("", finish_reason="cancelled")
                return
            after = self.follows.get(word) or self.follows[rng.choice(sorted(self.follows))]
            if params.temperature == 0:  # greedy: the most frequent next word (the first seen on a tie)
                word = after.most_common(1)[0][0]
            else:  # the counts sharpened or flattened by the temperature
                word = rng.choices(list(after), [n ** (1 / params.temperature) for n in after.values()])[0]
            clock.token()
            if shown := stops.push(" " + word):
                yield base.TextChunk(shown)
            if stops.stopped:
                yield base.TextChunk("", finish_reason="stop")
                return
        yield base.TextChunk(stops.flush(), finish_reason="length")
