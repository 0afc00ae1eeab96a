"""Registration: cheap to import, and `lora` listed with its options."""

from __future__ import annotations

import subprocess
import sys

from ttt_core.plugins import create_host

from ttt_plugin_lora import plugin
from ttt_plugin_lora.lora_config import LoRAConfig


def test_plugin_module_imports_no_torch() -> None:
    code = "import sys, ttt_plugin_lora.plugin; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_lora_is_registered_with_its_needs() -> None:
    component = create_host(extra_plugins=(("lora", plugin),)).registry["inner_learner"].get("lora")
    assert component.config is LoRAConfig
    assert component.needs_for(LoRAConfig()) == {"backbone": ("weight_deltas",)}


def test_config_refuses_unknown_roles_and_bad_layers() -> None:
    import pytest

    with pytest.raises(ValueError, match="unknown role 'qkv'; roles: q, k, v, o, gate, up, down"):
        LoRAConfig(targets=["qkv"])
    with pytest.raises(ValueError, match="names a role twice"):
        LoRAConfig(targets=["q", "q"])
    with pytest.raises(ValueError, match="distinct layer indices >= 0"):
        LoRAConfig(layers=[-1])
    with pytest.raises(ValueError, match="'init' must be one of balanced, lora"):
        LoRAConfig(init="zeros")
