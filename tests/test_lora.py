"""Per-size LoRAs: merged == unmerged, peft export loads into peft, switching sizes is clean."""
import torch

from conftest import inputs, random_dit
from flexcli.flex.core import flexify_model
from flexcli.flex.layers import lora_layers, merge_loras
from flexcli.io.peft_export import export_peft_adapters


def _trained(model, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_merged_equals_unmerged_for_every_size():
    model = _trained(flexify_model(random_dit(), [4, 8], mode="lora", lora_rank=4))
    x, t, y = inputs(model.config)
    with torch.no_grad():
        unmerged = {p: model(x, t, y, patch_size=p) for p in model.patch_sizes}
        merge_loras(model)
        assert not lora_layers(model)
        for p in model.patch_sizes:
            got = model(x, t, y, patch_size=p)
            if p == 2:
                assert torch.equal(got, unmerged[p])
            else:
                assert torch.allclose(got, unmerged[p], atol=1e-5)


def test_each_size_uses_its_own_adapter():
    model = _trained(flexify_model(random_dit(), [4], mode="lora", lora_rank=4))
    x, t, y = inputs(model.config)
    with torch.no_grad():
        with_lora = model(x, t, y, patch_size=4)
        for _, layer in lora_layers(model):
            layer.lora_B["p4"].weight.zero_()
        assert (model(x, t, y, patch_size=4) - with_lora).abs().max() > 1e-4


def test_peft_export_loads_into_peft(tmp_path):
    """The exported adapter is a real peft adapter: peft applies it to the plain DiT's linears."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    import json

    model = _trained(flexify_model(random_dit(), [4], mode="lora", lora_rank=4))
    folders = export_peft_adapters(model, tmp_path, rank=4, alpha=4.0)
    assert [f.name for f in folders] == ["p4"]
    config = json.loads((tmp_path / "p4" / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["target_modules"]) == {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}
    tensors = load_file(tmp_path / "p4" / "adapter_model.safetensors")
    # A fresh peft injection on a plain copy, then the exported weights.
    plain = random_dit()
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=config["target_modules"]), plain)
    stripped = {k.replace("base_model.model.", ""): v for k, v in tensors.items()}
    result = set_peft_model_state_dict(plain, stripped)
    assert not [k for k in result.unexpected_keys if "lora" in k]
    for (name, theirs), (_, ours) in zip(lora_layers(plain), lora_layers(model)):
        assert torch.equal(theirs.get_delta_weight("default"), ours.get_delta_weight("p4")), name
