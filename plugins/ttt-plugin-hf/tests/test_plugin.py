"""Registration and the one-line errors: a missing directory, an unsupported architecture, a bad
inline config, a recurrence that needs what the backbone lacks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from ttt_core.errors import RecipeError, TTTError
from ttt_core.plugins import create_host
from ttt_core.recipe import build_recipe, tomllib
from ttt_core.registry import Provider, ProviderRegistry, Registry

from ttt_plugin_hf import plugin
from ttt_plugin_hf.config import HFConfig


def test_plugin_module_imports_neither_torch_nor_transformers() -> None:
    code = "import sys, ttt_plugin_hf.plugin; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_hf_is_registered_with_its_capabilities() -> None:
    component = create_host(extra_plugins=(("hf", plugin),)).registry["backbone"].get("hf")
    assert component.config is HFConfig
    assert set(component.provides) == {"packed_rows", "weight_deltas"}


def registry() -> Registry:
    from ttt_core.builtin import ttt_register_components as builtins

    reg = Registry()
    builtins(ProviderRegistry(registry=reg, provider=Provider("builtin", "ttt-core", "0")))
    plugin.ttt_register_components(ProviderRegistry(registry=reg, provider=Provider("hf", "ttt-plugin-hf", "0")))
    if importlib.util.find_spec("ttt_plugin_rmt"):
        from ttt_plugin_rmt.plugin import ttt_register_components as rmt

        rmt(ProviderRegistry(registry=reg, provider=Provider("rmt", "ttt-plugin-rmt", "0")))
    return reg


MEMORY = '[memory.learner]\nname = "memory_tokens"\n[memory.writer]\nname = "identity"\n'


def recipe(backbone: str, recurrence: str = 'name = "single"', memory: str = MEMORY):
    return build_recipe(tomllib.loads(
        f'[task]\nname = "ar"\n[backbone]\nname = "hf"\n{backbone}\n{memory}'
        f'[recurrence]\n{recurrence}\n[optimizer]\nname = "adamw"\n'), "x.toml", registry())


def one_line(backbone: str, **kwargs) -> str:
    with pytest.raises(RecipeError) as info:
        recipe(backbone, **kwargs)
    assert len(info.value.lines) == 1, info.value.lines
    return info.value.lines[0]


def test_a_missing_directory_is_one_line(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    assert one_line(f'path = "{missing}"') == f"x.toml: [backbone] option 'path': {missing}: no such directory"
    (tmp_path / "empty").mkdir()
    assert one_line(f'path = "{tmp_path / "empty"}"') == (
        f"x.toml: [backbone] option 'path': {tmp_path / 'empty'} has no config.json: not a saved transformers model")


def test_an_unsupported_architecture_is_one_line(tmp_path, tiny_dirs) -> None:
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    supported = "supported: gpt2, gpt_neox, llama, mistral, qwen2"
    assert one_line(f'path = "{tmp_path / "bert"}"') == (
        f"x.toml: [backbone] option 'path': {tmp_path / 'bert'}: model_type 'bert' is not supported by the hf backbone; {supported}")
    assert one_line('config = { model_type = "t5" }') == (
        f"x.toml: [backbone] option 'config': model_type 't5' is not supported by the hf backbone; {supported}")
    assert one_line('config = { hidden_size = 8 }') == (
        "x.toml: [backbone] option 'config' needs a 'model_type' string (e.g. \"gpt_neox\")")
    assert one_line(f'path = "{tiny_dirs["gpt2"]}"\nconfig = {{ model_type = "gpt2" }}').endswith(
        "give exactly one of option 'path' (a saved model or hub id) and option 'config' (an inline config table)")
    assert recipe(f'path = "{tiny_dirs["gpt2"]}"').components["backbone"].config.path == str(tiny_dirs["gpt2"])


def test_an_unknown_inline_field_is_one_line() -> None:
    from ttt_plugin_hf.backbone import build_hf

    with pytest.raises(TTTError) as info:
        build_hf(HFConfig(config={"model_type": "gpt_neox", "hiden_size": 16}), vocab_size=12)
    assert info.value.lines == [
        "[backbone] hf: option 'config': gpt_neox's config has no field 'hiden_size' (did you mean 'hidden_size'?)"]
    # transformers' legacy names are converted, not refused: rotary_pct is GPT-NeoX's partial rotary factor
    backbone = build_hf(HFConfig(config={"model_type": "gpt_neox", "hidden_size": 16, "num_attention_heads": 2,
                                         "num_hidden_layers": 1, "intermediate_size": 16, "rotary_pct": 0.25}),
                        vocab_size=12)
    assert backbone.model.config.rope_parameters["partial_rotary_factor"] == 0.25
    assert (backbone.vocab_size, backbone.n_layers, backbone.dim) == (12, 1, 16)


@pytest.mark.skipif(not importlib.util.find_spec("ttt_plugin_rmt"), reason="prmt4 is ttt-plugin-rmt's")
def test_prmt4_is_refused_for_want_of_layer_blocks(tiny_dirs) -> None:
    assert one_line(f'path = "{tiny_dirs["gpt2"]}"', recurrence='name = "prmt4"', memory="") == (
        "x.toml: [recurrence] prmt4 needs a backbone with 'layer_blocks'; backbone 'hf' does not provide it")
