"""Adapters in peft's format: `ttt-lora-export RUN OUT` (or `python -m ttt_plugin_lora.export`).

Writes two peft adapter directories (``adapter_config.json`` + ``adapter_model.safetensors``) for a
run whose learner is `lora` on the `llama` backbone:

- ``OUT/initial``: the meta-learned initial adapters (what every example starts from);
- ``OUT/<split>_<index>``: the adapters of one held-out example after the run's inner loop (and
  recurrence: with rmt4 the state carried over all its segments) has adapted them on its context.

They load with ``PeftModel.from_pretrained(model, directory)`` into a ``LlamaForCausalLM`` holding the
backbone's weights (`hf_llama_state_dict` maps them): our roles q, k, v, o, gate, up, down are the
module names q_proj ... down_proj, A is ``lora_A`` ``[r, in]``, B is ``lora_B`` ``[out, r]``, and peft's
scaling ``lora_alpha / r`` is ours. Memory tokens (``tokens`` > 0) have no place in peft's format and
are not written.

A command of this plugin rather than ``ttt export``: the core CLI has no export command nor a hook for
plugins to add one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from ttt_core.errors import TTTError
from ttt_core.interfaces import IndexedTask, State

from ttt_plugin_lora.lora import LoRA

PEFT_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
                "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
"""Our roles -> the module paths of a transformers LlamaDecoderLayer."""


def adapter_config(learner: LoRA) -> dict:
    """peft's ``adapter_config.json`` for `learner`'s adapters (a LoraConfig's fields)."""
    config = learner.config
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None, "inference_mode": True,
        "r": config.rank, "lora_alpha": config.alpha, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "init_lora_weights": True,
        "target_modules": sorted(PEFT_MODULES[role].split(".")[1] for role in config.targets),
        "layers_to_transform": list(learner.layers), "layers_pattern": "layers",
    }


def adapter_tensors(learner: LoRA, state: State, example: int = 0) -> dict[str, Tensor]:
    """peft's state-dict keys -> example `example`'s A and B (float32, contiguous)."""
    tensors = {}
    for (layer, role), (a, b) in learner.adapters(state).items():
        prefix = f"base_model.model.model.layers.{layer}.{PEFT_MODULES[role]}"
        tensors[f"{prefix}.lora_A.weight"] = a[example].detach().float().cpu().contiguous()
        tensors[f"{prefix}.lora_B.weight"] = b[example].detach().float().cpu().contiguous()
    return tensors


def write_adapters(learner: LoRA, state: State, directory: Path, example: int = 0) -> Path:
    """Write example `example` of `state` as a peft adapter directory; return it."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise TTTError("writing peft adapters needs safetensors: pip install 'ttt-plugin-lora[peft]'") from None
    directory.mkdir(parents=True, exist_ok=True)
    save_file(adapter_tensors(learner, state, example), str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps(adapter_config(learner), indent=2) + "\n")
    return directory


def hf_llama_state_dict(backbone: nn.Module) -> dict[str, Tensor]:
    """The `llama` backbone's weights under transformers' ``LlamaForCausalLM`` names (fused q/k/v and
    gate/up split into their modules; the same RoPE convention, so logits agree)."""
    config = backbone.config
    d, h = config.dim, config.hidden_dim
    out = {"model.embed_tokens.weight": backbone.tok_embeddings.weight, "model.norm.weight": backbone.norm,
           "lm_head.weight": backbone.lm_head.weight}
    for i, layer in enumerate(backbone.layers):
        p = f"model.layers.{i}."
        q, k, v = layer.wqkv.split(d)
        gate, up = layer.w_gate_up.split(h)
        out.update({
            p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": layer.wo, p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": layer.w_down, p + "input_layernorm.weight": layer.attn_norm,
            p + "post_attention_layernorm.weight": layer.mlp_norm,
        })
    return {name: t.detach().clone() for name, t in out.items()}


def adapted_state(model: nn.Module, episode) -> State:
    """The state the learner reads the query with after the recurrence adapted it on `episode`."""
    seen: list[State] = []
    hook = model.learner.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        model.eval()
        with torch.enable_grad():  # the inner loop needs autograd, also when evaluating
            model(episode)
    finally:
        hook.remove()
    if not seen:
        raise TTTError("the recurrence never read through the lora learner; nothing adapted to export")
    return {k: v.detach() for k, v in seen[-1].items()}


def export_run(run_dir: str | Path, out: str | Path, checkpoint: str | None = None, split: str = "test",
               index: int = 0) -> list[Path]:
    """Write the initial adapters and those of sample `index` of `split` of a run; return the directories."""
    from ttt_core.builtin.llama import Llama
    from ttt_core.train.evaluate import load_run

    run = load_run(run_dir, checkpoint)
    model, task = run.built.model, run.built.task
    if not isinstance(model.learner, LoRA):
        raise TTTError(f"{run_dir}: its learner is not lora; nothing to export as peft adapters")
    if not isinstance(model.backbone, Llama):
        raise TTTError(f"{run_dir}: peft adapters map onto transformers' LlamaForCausalLM, so only a run on "
                       "the llama backbone can be exported")
    if not isinstance(task, IndexedTask):
        raise TTTError(f"{run_dir}: its task has no indexed samples to pick example {index} from")
    size = task.split_size(split)
    if size is not None and not 0 <= index < size:
        raise TTTError(f"--index {index}: the {split} set has {size} samples")
    out = Path(out)
    written = [write_adapters(model.learner, model.learner.init_state(1), out / "initial")]
    episode = task.batch(split, range(index, index + 1)).to(run.device)
    written.append(write_adapters(model.learner, adapted_state(model, episode), out / f"{split}_{index}"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ttt-lora-export",
        description="Write a lora run's initial adapters and one adapted example's in peft's adapter format.")
    parser.add_argument("run_dir", help="a run directory of a recipe with [memory.learner] name = \"lora\"")
    parser.add_argument("out", help="directory to write OUT/initial and OUT/<split>_<index> into")
    parser.add_argument("--checkpoint", help="checkpoint file (default: the latest)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--index", type=int, default=0, help="which sample of the split to adapt on")
    args = parser.parse_args(argv)
    try:
        for directory in export_run(args.run_dir, args.out, args.checkpoint, args.split, args.index):
            print(directory)
    except TTTError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
