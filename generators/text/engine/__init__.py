"""The CPU/GPU decoding engine behind the transformers plugin.

Modules, from the leaves up (no module imports one above it):
- `hooks`, `measure`: whether a layer may be bypassed; kernel choices measured at load.
- `int4`, `onednn`: layer kinds the loaders put into a model (4-bit groups, oneDNN-packed bfloat16).
- `quantizers`: the table of quantization choices (what each needs, applies, refuses).
- `kv_cache`: preallocated keys and values that rows join and leave.
- `projection`: the kernel of each layer kind behind one call (a strategy table keyed by layer kind).
- `step`: the lean Llama decoding step; `native`: its layer loop built in C++ (`csrc/`).
- `batcher`: the continuous batcher with its prefix cache and chunked prefill.
- `decoder`: a loaded model's token loop (alone or batched); `prompt`: fitting a chat into the
  context window; `scoring`: log-likelihood.
- `loader`: from a source and load options to a model ready to decode (device, quantizer, GGUF cache,
  adapter, oneDNN packing, the C++ loop), and the memory estimates.

Sampling, detokenizing and stop strings are `generators/text/decoding.py`, shared with the other
text plugins. Importing the package imports no torch; its modules do.
"""
