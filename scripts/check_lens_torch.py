#!/usr/bin/env python3
"""Check that a lens directory written by `lensmap train-lens` loads in
PyTorch and in tuned-lens 0.2.0 (a manual check: CI has no tuned-lens).

    /tmp/tlvenv/bin/python scripts/check_lens_torch.py runs/train-lens-12288

1. `torch.load(params.pt, weights_only=True)`: an OrderedDict of float32
   tensors `0.weight`, `0.bias`, … with the shapes config.json promises.
2. `TunedLens.from_unembed_and_pretrained(unembed, lens_resource_id=DIR)`
   (tuned-lens 0.2.0 has no `TunedLens.load`; this is what
   `from_model_and_pretrained` calls), on a one-block Llama of the lens's
   width built here (the check is the file format and `load_state_dict`'s
   strict key/shape match, not the model), and its translators equal the
   tensors torch read.
"""
import json
import sys
from pathlib import Path

import torch


def main(lens_dir: str) -> None:
    d = Path(lens_dir)
    cfg = json.loads((d / "config.json").read_text())
    width, layers = cfg["d_model"], cfg["num_hidden_layers"]
    state = torch.load(d / "params.pt", map_location="cpu", weights_only=True)
    want = [f"{i}.{p}" for i in range(layers) for p in ("weight", "bias")]
    assert list(state) == want, f"keys {list(state)[:4]}… != {want[:4]}…"
    for k, t in state.items():
        shape = (width, width) if k.endswith("weight") else (width,)
        assert t.dtype == torch.float32 and tuple(t.shape) == shape, (k, t.dtype, t.shape)
    print(f"torch.load: {len(state)} float32 tensors, d_model {width}, {layers} translators")

    from transformers import LlamaConfig, LlamaForCausalLM
    from tuned_lens import TunedLens
    from tuned_lens.nn.unembed import Unembed

    tiny = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=width,
            intermediate_size=16,
            num_hidden_layers=layers,
            num_attention_heads=1,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=32,
        )
    )
    lens = TunedLens.from_unembed_and_pretrained(Unembed(tiny), lens_resource_id=str(d))
    got = lens.layer_translators.state_dict()
    assert len(lens.layer_translators) == layers
    for k, t in state.items():
        assert torch.equal(got[k], t), k
    norms = [float(state[f"{i}.weight"].norm()) for i in range(layers)]
    print(
        "tuned_lens.TunedLens.from_unembed_and_pretrained: loaded, translators equal; "
        f"|W_0| {norms[0]:.4f} … |W_{layers - 1}| {norms[-1]:.4f}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
