"""Training speed knobs: they must keep the maths of the modules they replace."""

from __future__ import annotations

import torch
from peft import get_peft_model
from transformers.activations import GELUTanh

from weibo_sentiment.modeling import load_classifier
from weibo_sentiment.speedups import IntegerDropout, fast_activations, fast_dropout
from weibo_sentiment.training import TrainConfig, lora_config


def test_integer_dropout_is_dropout():
    torch.manual_seed(0)
    x = torch.ones(400_001, requires_grad=True)  # not a multiple of 4
    layer = IntegerDropout(0.1)
    out = layer(x)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003
    assert torch.equal(out.detach().unique(), torch.tensor([0.0, 65536 / (65536 - 6554)]))
    lanes = (out.detach()[:400_000] == 0).float().view(-1, 4).mean(0)  # each 16-bit lane of a draw is uniform
    assert ((lanes - 0.1).abs() < 0.004).all(), lanes
    assert abs(out.mean().item() - 1) < 0.01  # survivors are scaled: the expectation is unchanged
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # the gradient goes through the same mask
    torch.manual_seed(0)
    assert torch.equal(IntegerDropout(0.1)(torch.ones(400_001)), out.detach())  # seeded like torch's RNG
    layer.eval()
    assert layer(x) is x
    assert torch.equal(IntegerDropout(0.0).train()(x), x)


def test_fast_modules_keep_the_model_output(tiny_base):
    torch.manual_seed(0)
    model = load_classifier(tiny_base, ["negative", "positive"]).eval()
    ids = torch.randint(200, 5000, (3, 17))
    before = model(input_ids=ids).logits
    assert fast_activations(model) == 2  # one MLP activation per layer
    assert all(type(block.mlp.act) is GELUTanh for block in model.transformer.h)
    peft_model = get_peft_model(model, lora_config(TrainConfig()))
    # GPT-2's embedding, attention, residual and MLP dropouts, and LoRA's on c_attn, attn/mlp c_proj
    assert fast_dropout(peft_model) == 1 + 2 * 3 + 2 * 3
    assert not [m for m in peft_model.modules() if type(m) is torch.nn.Dropout]
    peft_model.eval()
    assert torch.allclose(peft_model(input_ids=ids).logits, before, atol=1e-5)
