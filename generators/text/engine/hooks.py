"""Whether a module may be bypassed: the one rule every fast path of the engine follows.

A fast path calls a layer's kernel (or its `forward`) directly, skipping `nn.Module.__call__`. That is
only right when nobody hooked the module (a profiler, a LoRA adapter, a debugging tool): then the
module must be called the ordinary way. A leaf module, so the kernels, the step and the loaders can
all use it without importing each other.
"""

from __future__ import annotations

from typing import Any


def has_hooks(module: Any) -> bool:
    """Forward or backward hooks on `module`: then it must be called, not bypassed."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def forward_of(module: Any) -> Any:
    """The module's forward without nn.Module's call machinery, unless hooks are attached."""
    return module if has_hooks(module) else module.forward
