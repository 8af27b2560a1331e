"""bfloat16 Linear layers packed for oneDNN (generators/text/engine/onednn.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from generators.text.engine.onednn import PackedLinear, onednn_bfloat16_available, pack_linear_layers, packing_is_faster

pytestmark = pytest.mark.skipif(not onednn_bfloat16_available(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize("shape", [(1, 64), (3, 64), (16, 64), (300, 64), (2, 7, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_layer_equals_the_plain_one_bit_for_bit(shape: tuple[int, ...], bias: bool) -> None:
    """Any number of rows (one, a batch, a prefill), 2-D and 3-D: the same arithmetic as F.linear."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 96, bias=bias).to(torch.bfloat16)
    packed = PackedLinear(linear)
    x = torch.randn(shape).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(packed(x), linear(x))
    assert packed.packed_weight.is_mkldnn and (packed.in_features, packed.out_features) == (64, 96)


def test_packing_replaces_bfloat16_linears_but_not_a_head_tied_to_the_embedding() -> None:
    """A tied head keeps its plain weight (the embedding reads it: packing would be a second copy);
    float32 layers and layers with hooks stay as they are; small matrices are never measured as faster."""
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 32)
            self.mlp = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 32))
            self.hooked = nn.Linear(32, 32)
            self.head = nn.Linear(32, 50, bias=False)
            self.head.weight = self.embed.weight

        def get_input_embeddings(self) -> nn.Module:
            return self.embed

    model = Tiny().to(torch.bfloat16)
    model.hooked.register_forward_hook(lambda *_: None)
    float_layer = nn.Linear(8, 8)
    model.mlp.append(float_layer)
    assert pack_linear_layers(model) == 2
    assert [type(m) for m in model.mlp] == [PackedLinear, PackedLinear, nn.Linear]
    assert type(model.head) is nn.Linear and type(model.hooked) is nn.Linear
    assert not packing_is_faster(model.head.weight)  # 50x32: not worth a measurement
