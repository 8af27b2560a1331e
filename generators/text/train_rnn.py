"""Train a character-level LSTM: ``python -m generators.text.train_rnn --text FILE --out DIR``.

    python -m generators.text.train_rnn --text corpus.txt --out /tmp/lstm --epochs 10 --threads 1

Any UTF-8 text file works. The vocabulary is every character of the file; the first 90 % is
the training text and the contiguous last 10 % the validation text. Training is truncated
backpropagation through time: the training text is cut into ``--batch-size`` parallel streams
(each epoch from a new seeded offset) read ``--seq-len`` characters at a time, the LSTM state
carried from one window to the next and detached, gradients clipped to ``--clip``; the learning
rate follows a cosine from ``--lr`` to ``--lr``/10 over the run. After each epoch the validation
bits per character (cross-entropy in nats / ln 2) is measured, a sample is logged and appended
to ``samples.txt``, ``curves.png`` is redrawn and a resumable ``checkpoint.pt`` (model,
optimizer, history, RNG state) is written atomically; ``--resume`` continues from it exactly.
At the end the inference weights are exported as ``model.safetensors`` + ``config.json`` in
``--out`` (loadable by the ``char-lstm`` plugin). On CPU a given seed gives the same weights,
with or without an interruption and resume.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..base import SamplingParams
from ..image.checkpoint import load_training_state, resolve_device, rng_state, save_training_state, set_rng_state
from ..image.plots import draw_curves
from .char_lstm import CharLSTMConfig, build_network, sample_next, save_char_lstm

log = logging.getLogger(__name__)

TRAINING_STATE_FILE = "checkpoint.pt"
SAMPLES_FILE = "samples.txt"
CURVES_FILE = "curves.png"
VALIDATION_FRACTION = 0.1
VALIDATION_STREAMS = 16
SAMPLE_CHARS = 300
SAMPLE_TEMPERATURE = 0.8
LN2 = math.log(2.0)


@dataclass
class TrainOptions:
    """The command line as a value."""

    text: Path
    out: Path
    epochs: int = 10
    seq_len: int = 128
    batch_size: int = 64
    embed_dim: int = 64
    hidden: int = 384
    layers: int = 2
    dropout: float = 0.2
    tie_weights: bool = False
    lr: float = 2e-3
    clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None
    resume: bool = False
    progress: bool = True
    max_steps: int | None = None  # stop each epoch after this many steps (quick runs and tests)
    export_dtype: str = "float32"  # float32 | float16 | bfloat16: the exported weights (training stays float32)
    callback: Callable[[dict[str, Any]], None] | None = None  # step and epoch events (the job runner's curves)


@dataclass
class TrainResult:
    out: Path
    epochs: int
    train_seconds: float
    last: dict[str, float]
    history: list[dict[str, float]]


# ---------------------------------------------------------------------------- data

def read_text(path: str | os.PathLike) -> str:
    """The whole file as text, with an error a person can act on when it is missing, empty or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--text {path} does not exist or is not a file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--text {path} is not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); "
                         "convert it first, e.g. iconv -f latin1 -t utf-8") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise ValueError(f"--text {path} is empty")
    return text


@dataclass
class CharData:
    vocab: list[str]
    train: torch.Tensor  # (N,) int64 character ids
    valid: torch.Tensor

    @classmethod
    def from_text(cls, text: str, min_len: int) -> CharData:
        vocab = sorted(set(text))
        if len(vocab) < 2:
            raise ValueError("the text needs at least two distinct characters")
        index = {ch: i for i, ch in enumerate(vocab)}
        ids = torch.tensor([index[ch] for ch in text], dtype=torch.long)
        split = int(len(ids) * (1.0 - VALIDATION_FRACTION))
        if split < min_len + 1 or len(ids) - split < 2:
            raise ValueError(f"the text is too short ({len(text)} characters) for --seq-len {min_len}; "
                             f"it needs more than {math.ceil((min_len + 2) / (1 - VALIDATION_FRACTION))}")
        return cls(vocab, ids[:split], ids[split:])


def streams(ids: torch.Tensor, batch_size: int, offset: int = 0) -> torch.Tensor:
    """(B, L): ``ids[offset:]`` cut into ``batch_size`` contiguous rows (the remainder dropped)."""
    ids = ids[offset:]
    length = len(ids) // batch_size
    return ids[:length * batch_size].view(batch_size, length)


def detach(state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return state[0].detach(), state[1].detach()


# ---------------------------------------------------------------------------- evaluation and samples

@torch.no_grad()
def validation_bpc(model: Any, ids: torch.Tensor, device: torch.device, seq_len: int = 256,
                   n_streams: int = VALIDATION_STREAMS) -> float:
    """Bits per character on ``ids``, read as ``n_streams`` parallel streams with the state carried."""
    was_training = model.training
    model.eval()
    n_streams = max(1, min(n_streams, (len(ids) - 1) // 2))
    inputs = streams(ids[:-1], n_streams).to(device)
    targets = streams(ids[1:], n_streams).to(device)
    total, count, state = 0.0, 0, None
    for start in range(0, inputs.shape[1], seq_len):
        logits, state = model(inputs[:, start:start + seq_len], state)
        y = targets[:, start:start + seq_len]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
        count += y.numel()
    model.train(was_training)
    return total / count / LN2


@torch.no_grad()
def sample_text(model: Any, vocab: list[str], seed: int, length: int = SAMPLE_CHARS,
                temperature: float = SAMPLE_TEMPERATURE, prime: str = "\n\n") -> str:
    """A sample for the log; draws from its own generator, never the global RNG (resume stays exact)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = [index[c] for c in prime if c in index] or [0]
    params = SamplingParams(temperature=temperature, top_k=0, top_p=1.0)
    rng = torch.Generator().manual_seed(seed)
    logits, state = model(torch.tensor([ids], device=device), None)
    out = []
    for _ in range(length):
        token = sample_next(logits[0, -1], params, rng)
        out.append(vocab[token])
        logits, state = model(torch.tensor([[token]], device=device), state)
    model.train(was_training)
    return "".join(out)


# ---------------------------------------------------------------------------- helpers



def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"{cpu}, {os.cpu_count()} cores; trained on {where} with {torch.get_num_threads()} torch thread(s)"


def learning_rate(options: TrainOptions, step: int, total_steps: int) -> float:
    """Cosine from lr to lr/10 over the run."""
    progress = min(1.0, step / max(1, total_steps))
    return options.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))






def model_config(options: TrainOptions, vocab_size: int) -> CharLSTMConfig:
    return CharLSTMConfig(vocab_size=vocab_size, embed_dim=options.embed_dim, hidden=options.hidden,
                          layers=options.layers, dropout=options.dropout, tie_weights=options.tie_weights)


# ---------------------------------------------------------------------------- the loop

def train(options: TrainOptions) -> TrainResult:
    """Train (or resume) a char-LSTM on ``options.text`` and export it into ``options.out``."""
    if options.epochs < 1 or options.batch_size < 1 or options.seq_len < 2:
        raise ValueError("--epochs and --batch-size must be >= 1 and --seq-len >= 2")
    if options.threads:
        torch.set_num_threads(options.threads)
    device = resolve_device(options.device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    text_path = Path(options.text)
    data = CharData.from_text(read_text(text_path), options.seq_len)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)

    checkpoint_path = out / TRAINING_STATE_FILE
    state = load_training_state(checkpoint_path) if options.resume and checkpoint_path.is_file() else None
    if options.resume and state is None:
        log.info("no checkpoint at %s; starting from scratch", checkpoint_path)
    if state is not None:
        if state["vocab"] != data.vocab or state["num_chars"] != len(data.train) + len(data.valid):
            raise ValueError(f"{checkpoint_path} was trained on a different text; it cannot resume on {text_path}")
        saved = dict(state["options"])
        for key in ("seq_len", "batch_size", "embed_dim", "hidden", "layers", "dropout", "tie_weights", "lr", "clip",
                    "weight_decay", "seed", "max_steps"):
            if getattr(options, key) != saved[key]:
                log.warning("--%s %s ignored on resume: the checkpoint's %s is used", key.replace("_", "-"),
                            getattr(options, key), saved[key])
        options = dataclasses.replace(options, **{k: saved[k] for k in saved if k not in
                                                  ("text", "out", "epochs", "device", "threads", "resume", "progress",
                                                   "export_dtype")})
    config = model_config(options, len(data.vocab))
    seed = options.seed
    torch.manual_seed(seed)
    model = build_network(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    start_epoch, history, train_seconds = 0, [], 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], device)
        start_epoch, history, train_seconds = int(state["epoch"]), list(state["history"]), float(state["train_seconds"])
        log.info("resumed from epoch %d (%s)", start_epoch, checkpoint_path)
    # Each start of the command with another --epochs is a segment with its own cosine schedule: a run
    # extended with `--resume --epochs N` restarts the learning rate, so the export records the segments
    # (a checkpoint written before segments were recorded counts as one finished run).
    segments = [dict(s) for s in state.get("segments", [{"start_epoch": 0, "epochs": start_epoch}])] if state else []
    if not segments or segments[-1]["epochs"] != options.epochs:
        segments.append({"start_epoch": start_epoch, "epochs": options.epochs})

    steps_per_epoch = (len(data.train) - options.seq_len - 1) // (options.batch_size * options.seq_len)
    if steps_per_epoch < 1:
        raise ValueError(f"the training text ({len(data.train)} characters) is shorter than one batch of "
                         f"--batch-size {options.batch_size} x --seq-len {options.seq_len}; lower them")
    if options.max_steps:
        steps_per_epoch = min(steps_per_epoch, options.max_steps)
    total_steps = steps_per_epoch * options.epochs
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %d train / %d validation characters, vocabulary %d, %d parameters, %d steps/epoch of %d x %d, "
             "device %s, %d thread(s)", text_path, len(data.train), len(data.valid), len(data.vocab), n_params,
             steps_per_epoch, options.batch_size, options.seq_len, device, torch.get_num_threads())
    model.train()
    with logging_redirect_tqdm():
        for epoch in range(start_epoch, options.epochs):
            started = time.time()
            offset = int(torch.randint(options.seq_len, (1,), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)))
            x_all = streams(data.train[:-1], options.batch_size, offset).to(device)
            y_all = streams(data.train[1:], options.batch_size, offset).to(device)
            hidden: tuple[torch.Tensor, torch.Tensor] | None = None
            loss_sum = 0.0
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{options.epochs}", leave=False,
                       disable=not options.progress, mininterval=1.0, file=sys.stderr)
            for i in bar:
                lr = learning_rate(options, epoch * steps_per_epoch + i, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                window = slice(i * options.seq_len, (i + 1) * options.seq_len)
                logits, hidden = model(x_all[:, window], hidden)
                hidden = detach(hidden)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_all[:, window].reshape(-1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip)
                optimizer.step()
                loss_value = loss.item()
                loss_sum += loss_value
                bar.set_postfix(bpc=f"{loss_value / LN2:.3f}", refresh=False)
                if options.callback:
                    options.callback({"type": "step", "epoch": epoch + 1, "step": epoch * steps_per_epoch + i + 1,
                                      "total": total_steps, "train_bpc": loss_value / LN2})
            val_bpc = validation_bpc(model, data.valid, device)
            train_seconds += time.time() - started
            row = {"epoch": epoch + 1, "train_bpc": loss_sum / steps_per_epoch / LN2, "val_bpc": val_bpc,
                   "lr": lr, "train_seconds": round(train_seconds, 1)}
            history.append(row)
            log.info("epoch %d/%d train_bpc=%.4f val_bpc=%.4f lr=%.3g time=%.0fs", epoch + 1, options.epochs,
                     row["train_bpc"], val_bpc, lr, train_seconds)
            sample = sample_text(model, data.vocab, seed=seed + epoch)
            log.info("sample after epoch %d:\n%s", epoch + 1, sample)
            with open(out / SAMPLES_FILE, "a", encoding="utf-8") as f:
                f.write(f"=== epoch {epoch + 1} (val {val_bpc:.3f} bits/char, temperature {SAMPLE_TEMPERATURE}) ===\n"
                        f"{sample}\n\n")
            draw_curves(history, ["train_bpc", "val_bpc"], out / CURVES_FILE)
            if options.callback:
                options.callback({"type": "epoch", **row, "sample": sample})
            save_training_state(checkpoint_path, {
                "vocab": data.vocab, "num_chars": len(data.train) + len(data.valid),
                "options": {k: v for k, v in dataclasses.asdict(options).items() if k not in ("text", "out", "callback")},
                "epoch": epoch + 1, "history": history, "train_seconds": train_seconds, "segments": segments,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(device)})

    last = history[-1] if history else {}
    commands = []
    for i, segment in enumerate(segments):
        argv = options_to_argv(dataclasses.replace(options, epochs=segment["epochs"])) + (["--resume"] if i else [])
        commands.append("python -m generators.text.train_rnn " + " ".join(shlex.quote(a) for a in argv))
    training_info = {
        "command": " && ".join(commands), "segments": segments, "weights_dtype": options.export_dtype,
        "text": text_path.name, "train_chars": len(data.train), "validation_chars": len(data.valid),
        "epochs": len(history), "steps_per_epoch": steps_per_epoch, "seq_len": options.seq_len,
        "batch_size": options.batch_size, "lr": options.lr, "clip": options.clip, "seed": seed,
        "seconds": round(train_seconds, 1), "machine": machine_description(device), "device": str(device),
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "validation_bpc": last.get("val_bpc"),
        "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in history],
    }
    save_char_lstm(out, model, data.vocab, training_info, dtype=getattr(torch, options.export_dtype))
    log.info("exported the model to %s", out)
    return TrainResult(out, len(history), train_seconds, last, history)


# ---------------------------------------------------------------------------- command line

def options_to_argv(options: TrainOptions) -> list[str]:
    argv = ["--text", os.fspath(options.text), "--out", os.fspath(options.out), "--epochs", str(options.epochs),
            "--seq-len", str(options.seq_len), "--batch-size", str(options.batch_size),
            "--embed-dim", str(options.embed_dim), "--hidden", str(options.hidden), "--layers", str(options.layers),
            "--dropout", str(options.dropout), "--lr", str(options.lr), "--clip", str(options.clip),
            "--seed", str(options.seed), "--device", options.device]
    if options.tie_weights:
        argv.append("--tie-weights")
    if options.weight_decay:
        argv += ["--weight-decay", str(options.weight_decay)]
    if options.threads:
        argv += ["--threads", str(options.threads)]
    if options.max_steps:
        argv += ["--max-steps", str(options.max_steps)]
    if options.export_dtype != "float32":
        argv += ["--export-dtype", options.export_dtype]
    return argv


def parse_args(argv: list[str] | None = None) -> TrainOptions:
    d = TrainOptions(Path(), Path())
    parser = argparse.ArgumentParser(prog="python -m generators.text.train_rnn", description=__doc__.split("\n")[0])
    parser.add_argument("--text", type=Path, required=True, help="UTF-8 text file (last 10 %% is held out)")
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, curves, samples, exported model")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--seq-len", type=int, default=d.seq_len, help="characters per truncated-BPTT window")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="parallel streams")
    parser.add_argument("--embed-dim", type=int, default=d.embed_dim)
    parser.add_argument("--hidden", type=int, default=d.hidden, help="LSTM units per layer")
    parser.add_argument("--layers", type=int, default=d.layers)
    parser.add_argument("--dropout", type=float, default=d.dropout)
    parser.add_argument("--tie-weights", action="store_true", help="share embedding and read-out (embed-dim = hidden)")
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate at the start (cosine to lr/10)")
    parser.add_argument("--clip", type=float, default=d.clip, help="gradient norm clipping")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt (with a larger --epochs: extend a finished run; "
                             "the learning rate restarts on a cosine over the new total)")
    parser.add_argument("--max-steps", type=int, default=None, help="at most this many steps per epoch (quick runs)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument("--export-dtype", choices=("float32", "float16", "bfloat16"), default=d.export_dtype,
                        help="dtype of the exported weights (float16 halves the file; training is float32)")
    args = parser.parse_args(argv)
    return TrainOptions(text=args.text, out=args.out, epochs=args.epochs, seq_len=args.seq_len, batch_size=args.batch_size,
                        embed_dim=args.embed_dim, hidden=args.hidden, layers=args.layers, dropout=args.dropout,
                        tie_weights=args.tie_weights, lr=args.lr, clip=args.clip, weight_decay=args.weight_decay,
                        seed=args.seed, device=args.device, threads=args.threads, resume=args.resume,
                        progress=not args.no_progress, max_steps=args.max_steps,
                        export_dtype=args.export_dtype)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_args(argv)
    try:
        result = train(options)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        raise SystemExit(2) from error
    print(f"trained for {result.epochs} epochs in {result.train_seconds / 60:.1f} min -> {result.out} "
          f"(validation {result.last.get('val_bpc', float('nan')):.4f} bits/char)")


if __name__ == "__main__":
    main()
