"""LoRA fine-tuning of a causal language model through peft, on a text or on chats.

Data: a text is tokenized once and cut into blocks of `max_length` tokens; its last `holdout` fraction
of blocks (at least one) is held out. Chats (OpenAI `messages`) go through the model's chat template,
and only the assistant's tokens are learned and scored; the last `holdout` fraction of conversations is
held out. The job measures held-out perplexity (exp of the mean token cross-entropy) before the first
step and after each epoch, so the gain is measured on text the adapter never saw.

Training: AdamW on the LoRA weights only, linear warm-up then linear decay, batches padded with the
labels of the padding set to -100. A checkpoint (adapter weights, optimizer, step, RNG, history) is
written every `checkpoint_every` steps and at each epoch's end; `resume` continues from it exactly
(the batch order of an epoch comes from the seed and the epoch). The result is a peft adapter folder
(`adapter_config.json` + `adapter_model.safetensors`) that the transformers plugin loads on its base.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINT = "lora-checkpoint.pt"
ADAPTER_DIR = "adapter"
IGNORE = -100

Report = Callable[[dict[str, Any]], None]


@dataclass
class LoraOptions:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    lr: float = 1e-3
    epochs: int = 2
    max_length: int = 256
    batch_size: int = 4
    max_steps: int | None = None  # stop after this many optimizer steps in all (quick runs, tests)
    holdout: float = 0.1
    seed: int = 0
    target_modules: str = "all-linear"
    checkpoint_every: int = 10
    quantization: str = "none"  # none | 4bit (QLoRA: bitsandbytes NF4 base, CUDA only)
    device: str = "auto"

    def check(self) -> None:
        problems = []
        if not 1 <= self.rank <= 256:
            problems.append("rank must be 1-256")
        if not 0 < self.alpha <= 1024:
            problems.append("alpha must be in (0, 1024]")
        if not 0 < self.lr <= 0.1:
            problems.append("learning rate must be in (0, 0.1]")
        if not 1 <= self.epochs <= 100:
            problems.append("epochs must be 1-100")
        if not 16 <= self.max_length <= 4096:
            problems.append("max length must be 16-4096 tokens")
        if not 1 <= self.batch_size <= 64:
            problems.append("batch size must be 1-64")
        if not 0 < self.holdout < 0.5:
            problems.append("held-out fraction must be in (0, 0.5)")
        if self.quantization not in ("none", "4bit"):
            problems.append("quantization must be none or 4bit")
        if problems:
            raise ValueError("; ".join(problems) + ".")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


# ------------------------------------------------------------------ data

def text_examples(tokenizer: Any, text: str, max_length: int) -> list[Example]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    blocks = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    blocks = [b for b in blocks if len(b) >= 8]
    return [Example(b, list(b)) for b in blocks]


def chat_examples(tokenizer: Any, conversations: list[list[dict[str, str]]], max_length: int) -> list[Example]:
    """Each conversation through the chat template; labels only on the assistant's replies (and the end
    of turn the template puts after them), found by character offsets of the rendered text."""
    examples = []
    for messages in conversations:
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
            through = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
            if full.startswith(through) and through.startswith(before):
                spans.append((len(before), len(through)))
        encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"][:max_length], encoded["offset_mapping"][:max_length]
        labels = [t if any(a <= start < b for a, b in spans) else IGNORE for t, (start, _) in zip(ids, offsets, strict=False)]
        if any(label != IGNORE for label in labels):
            examples.append(Example(ids, labels))
    return examples


def read_chats(path: Path) -> list[list[dict[str, str]]]:
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split(examples: list[Example], holdout: float) -> tuple[list[Example], list[Example]]:
    """The last `holdout` fraction (at least one example) is held out."""
    if len(examples) < 2:
        raise ValueError(f"The data make {len(examples)} training example(s); at least 2 are needed (one is held out "
                         "to measure perplexity). Upload more text or lower the max length.")
    held = max(1, round(len(examples) * holdout))
    return examples[:-held], examples[-held:]


def batches(examples: list[Example], batch_size: int, pad_id: int) -> list[tuple[Any, Any, Any]]:
    import torch

    out = []
    for i in range(0, len(examples), batch_size):
        group = examples[i:i + batch_size]
        width = max(len(e.input_ids) for e in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        labels = torch.full((len(group), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, e in enumerate(group):
            n = len(e.input_ids)
            ids[row, :n] = torch.tensor(e.input_ids)
            labels[row, :n] = torch.tensor(e.labels)
            mask[row, :n] = 1
        out.append((ids, labels, mask))
    return out


# ------------------------------------------------------------------ measuring

def token_loss(model: Any, ids: Any, labels: Any, mask: Any) -> tuple[Any, int]:
    """Summed next-token cross-entropy over the labelled tokens, and how many there were."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")
    return loss, int((target != IGNORE).sum())


def perplexity(model: Any, examples: list[Example], pad_id: int, device: Any, batch_size: int = 4) -> float:
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels, mask in batches(examples, batch_size, pad_id):
            loss, n = token_loss(model, ids.to(device), labels.to(device), mask.to(device))
            total, count = total + float(loss), count + n
    model.train(was_training)
    return math.exp(total / max(count, 1))


# ------------------------------------------------------------------ the model

def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda, but no CUDA GPU is visible; pick cpu (or auto).")
    return name


def load_base(base_dir: str | Path, options: LoraOptions, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if options.quantization == "4bit":
        if device != "cuda":
            raise ValueError("QLoRA (4bit) needs a CUDA GPU (bitsandbytes); on a CPU pick quantization=none.")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16,
                                                           bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": 0}
    else:
        kwargs["dtype"] = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    if options.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    else:
        model.to(device)
    return model, tokenizer


def with_lora(model: Any, options: LoraOptions) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout, bias="none",
                        target_modules=options.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


# ------------------------------------------------------------------ the loop

def learning_rate(options: LoraOptions, step: int, total: int) -> float:
    warmup = max(1, min(10, total // 10))
    if step < warmup:
        return options.lr * (step + 1) / warmup
    return options.lr * max(0.05, (total - step) / max(1, total - warmup))


def fine_tune(base_dir: str | Path, data_path: str | Path, data_kind: str, out: str | Path, options: LoraOptions,
              report: Report = lambda event: None, resume: bool = False) -> dict[str, Any]:
    """Train a LoRA adapter on `data_path` (`text` or `chat`) and save it into OUT/adapter.

    `report` gets {"type": "step" | "epoch" | "log", …} events as training goes. Returns the figures."""
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    options.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    model, tokenizer = load_base(base_dir, options, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if data_kind == "chat":
        examples = chat_examples(tokenizer, read_chats(Path(data_path)), options.max_length)
    else:
        examples = text_examples(tokenizer, Path(data_path).read_text(encoding="utf-8"), options.max_length)
    train, held = split(examples, options.holdout)
    steps_per_epoch = math.ceil(len(train) / options.batch_size)
    total = steps_per_epoch * options.epochs
    if options.max_steps:
        total = min(total, options.max_steps)
    report({"type": "log", "message": f"{len(train)} training / {len(held)} held-out examples of up to "
            f"{options.max_length} tokens, {steps_per_epoch} steps per epoch, {total} steps, device {device}, "
            f"{torch.get_num_threads()} thread(s)"})

    model = with_lora(model, options)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=0.0)
    checkpoint = out / CHECKPOINT
    step, history, seconds = 0, [], 0.0
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, history, seconds = state["step"], state["history"], state["seconds"]
        ppl_before = state["ppl_before"]
        report({"type": "log", "message": f"resumed from step {step} of {total}"})
    else:
        report({"type": "log", "message": "measuring held-out perplexity before training…"})
        ppl_before = perplexity(model, held, pad_id, device, options.batch_size)
        report({"type": "epoch", "epoch": 0, "step": 0, "val_ppl": ppl_before})

    def save_checkpoint() -> None:
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(), "step": step, "history": history, "seconds": seconds,
                    "ppl_before": ppl_before, "options": asdict(options)}, tmp)
        tmp.replace(checkpoint)

    model.train()
    ppl_after = history[-1]["val_ppl"] if history else ppl_before
    while step < total:
        epoch, first = divmod(step, steps_per_epoch)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(options.seed * 1_000_003 + epoch))
        epoch_batches = batches([train[i] for i in order.tolist()], options.batch_size, pad_id)
        for ids, labels, mask in epoch_batches[first:]:
            started = time.perf_counter()
            lr = learning_rate(options, step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, count = token_loss(model, ids.to(device), labels.to(device), mask.to(device))
            loss = loss_sum / max(count, 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            step += 1
            seconds += time.perf_counter() - started
            report({"type": "step", "step": step, "total": total, "epoch": epoch + 1, "loss": loss.item(), "lr": lr,
                    "seconds": seconds})
            end_of_epoch = step % steps_per_epoch == 0 or step == total
            if end_of_epoch:
                ppl_after = perplexity(model, held, pad_id, device, options.batch_size)
                history.append({"epoch": epoch + 1, "step": step, "val_ppl": ppl_after})
                report({"type": "epoch", "epoch": epoch + 1, "step": step, "val_ppl": ppl_after})
            if end_of_epoch or step % options.checkpoint_every == 0:
                save_checkpoint()
            if step >= total:
                break
    adapter_dir = out / ADAPTER_DIR
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    figures = {"ppl_before": ppl_before, "ppl_after": ppl_after,
               "ppl_change": ppl_after / ppl_before - 1.0, "steps": step, "train_seconds": round(seconds, 1),
               "train_examples": len(train), "heldout_examples": len(held),
               "trainable_parameters": sum(p.numel() for p in trainable)}
    report({"type": "log", "message": f"held-out perplexity {ppl_before:.2f} → {ppl_after:.2f} "
            f"({figures['ppl_change'] * 100:+.1f} %) after {step} steps"})
    return figures
