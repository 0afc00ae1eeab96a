"""The `hf` backbone: a transformers causal LM run as a black box through its own code.

What the core asks of a backbone, and how a transformers model gives it:

- embeddings in, so memory tokens can be prefixed: the base model takes ``inputs_embeds``;
- a padding mask and positions: a ``[B, 1, T, T]`` mask built here (causal, real keys only, and
  always the diagonal, as `ttt_core.attention.allowed_keys` says for every backbone), which
  transformers passes to its attention unchanged, and ``position_ids`` counting from 0 over
  ``[memory; tokens]``; several sequences per row (`PackedRows`) are the same two tensors;
- hidden states per block (rmt carries the last block's output as memory): forward hooks record
  the first block's input and each block's output, before the final norm (transformers' own
  ``hidden_states`` end with the normed one);
- attention with a double backward while the inner loop keeps the graph: transformers reads
  ``config._attn_implementation`` at every call, so each forward sets it to ``eager`` inside
  `ttt_core.attention.keep_graph` and ``sdpa`` elsewhere (attention = "auto");
- per-example low-rank deltas (`WeightDeltas`, LoRA memory): forward hooks on the targeted linear
  modules add ``x @ down[b].T @ up[b].T`` to their outputs for the duration of one forward, so the
  model's code runs unchanged and gradients reach both the deltas and the weights, any number of
  times.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from ttt_core.attention import allowed_keys, graph_kept
from ttt_core.errors import TTTError, did_you_mean, first_line
from ttt_core.interfaces import Backbone, BackboneOutput

from ttt_plugin_hf.config import HFConfig, local_directory
from ttt_plugin_hf.families import FAMILIES, Family, unsupported

LABEL = "[backbone] hf"


# ---------------------------------------------------------------------------------------------
# Loading


def _without_dropout(hf_config: Any) -> None:
    """Every float ``*dropout`` / ``*pdrop`` field of a transformers config set to 0."""
    for key, value in hf_config.to_dict().items():
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            setattr(hf_config, key, 0.0)


def inline_config(table: dict[str, Any], vocab_size: int) -> Any:
    """A transformers config from a recipe's inline table, with the task's vocabulary size. A field
    the config class neither takes nor converts (transformers keeps unknown ones silently) is refused."""
    from transformers import CONFIG_MAPPING

    fields = dict(table)
    model_type = fields.pop("model_type")
    cls = CONFIG_MAPPING[model_type]
    parameters = inspect.signature(cls.__init__).parameters
    special = {}  # default special-token ids outside the task's vocabulary (GPT-2's 50256): none
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        default = parameters[key].default if key in parameters else None
        if key not in fields and isinstance(default, int) and default >= vocab_size:
            special[key] = None
    hf_config = cls(**{**special, **fields, "vocab_size": vocab_size})
    known = set(parameters) | set(getattr(cls, "attribute_map", {}))
    for key in fields:
        if key not in known and hasattr(hf_config, key):  # kept, not consumed as a legacy name
            raise TTTError(f"{LABEL}: option 'config': {model_type}'s config has no field '{key}'{did_you_mean(key, known)}")
    return hf_config


def load_model(config: HFConfig, vocab_size: int) -> nn.Module:
    """The transformers causal LM a config names, float32, its vocabulary the task's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    attn = "eager" if config.attention == "eager" else "sdpa"
    if config.config is not None:
        hf_config = inline_config(config.config, vocab_size)
        if not config.dropout:
            _without_dropout(hf_config)
        return AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn)
    directory = local_directory(config.path)
    source = config.path if directory is None else str(directory)
    try:
        hf_config = AutoConfig.from_pretrained(source)
        problem = unsupported(hf_config.model_type)
        if problem:
            raise TTTError(f"{LABEL}: {config.path}: {problem}")
        if not config.dropout:
            _without_dropout(hf_config)
        model = AutoModelForCausalLM.from_pretrained(source, config=hf_config, attn_implementation=attn, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise TTTError(f"{LABEL}: cannot load '{config.path}': {first_line(exc)}") from None
    if model.get_input_embeddings().num_embeddings != vocab_size:
        # the task's tokenizer wins: rows kept by id, new ones drawn as the model's own init draws them
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    return model


# ---------------------------------------------------------------------------------------------
# The backbone


def _add_low_rank(module: nn.Module, args: tuple[Tensor, ...], output: Tensor, *, down: Tensor, up: Tensor) -> Tensor:
    """Forward hook: a linear module's output plus ``up[b] @ down[b] @ x`` for each example b."""
    return output + torch.einsum("btr,bor->bto", torch.einsum("bti,bri->btr", args[0], down), up)


def _out_in(module: nn.Module) -> tuple[int, int]:
    """``(out, in)`` of a linear map: an ``nn.Linear``, or GPT-2's ``Conv1D`` (weight ``[in, out]``)."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return module.nf, module.weight.shape[0]


class HFBackbone(nn.Module, Backbone):
    """A transformers ``*ForCausalLM`` (``self.model``) behind the core's Backbone contract.

    Capabilities: `PackedRows` (forward's ``positions`` and ``segments``) and `WeightDeltas`
    (``forward_with_deltas``; targets ``layers.<i>.<name>``: q, k, v, o, gate, up, down for the llama
    layout, wqkv = [q; k; v], o, up, down for gpt_neox and gpt2). No `LayerBlocks` (prmt4)."""

    def __init__(self, model: nn.Module, *, attention: str = "auto", freeze: str = "none") -> None:
        super().__init__()
        problem = unsupported(model.config.model_type)
        if problem:
            raise TTTError(f"{LABEL}: {problem}")
        self.model = model
        self.family: Family = FAMILIES[model.config.model_type]
        self.attention = attention
        self.dim = model.config.hidden_size
        self.n_layers = len(self.layers)
        self.vocab_size = model.get_input_embeddings().num_embeddings
        if freeze == "all":
            model.requires_grad_(False)
        elif freeze == "embeddings":  # token and position embeddings (and a head tied to them)
            for module in model.modules():
                if isinstance(module, nn.Embedding):
                    module.requires_grad_(False)

    # properties, not submodules: registered twice, every block would be in the state dict twice
    @property
    def base(self) -> nn.Module:
        return getattr(self.model, self.family.base)

    @property
    def layers(self) -> nn.ModuleList:  # type: ignore[override]
        return getattr(self.base, self.family.layers)

    @property
    def final_norm(self) -> nn.Module:
        return getattr(self.base, self.family.final_norm)

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids)

    def head(self, hidden: Tensor) -> Tensor:
        """Final norm and output projection (what the base model and the LM head do after the blocks)."""
        return self.model.get_output_embeddings()(self.final_norm(hidden))

    def _attention(self) -> str:
        """Pick the attention implementation of this call and tell transformers (see the module docstring)."""
        kept = graph_kept()
        wanted = ("eager" if kept else "sdpa") if self.attention == "auto" else self.attention
        if kept and wanted == "sdpa":
            raise TTTError(f"{LABEL}: attention = 'sdpa' has no double backward, and this inner loop keeps the graph "
                           "(second order); use attention = 'auto' or 'eager'")
        if self.model.config._attn_implementation != wanted:
            self.model.config._attn_implementation = wanted
        return wanted

    def forward(
        self,
        embeds: Tensor,
        mask: Tensor | None = None,
        return_hidden: bool = False,
        positions: Tensor | None = None,
        segments: Tensor | None = None,
    ) -> BackboneOutput:
        """embeds ``[B, T, d]``, mask ``[B, T]`` bool (True = real) -> logits ``[B, T, V]``; positions
        ``[T]`` or ``[B, T]`` default to 0 .. T - 1 over the whole input, memory included."""
        implementation = self._attention()
        b, t, _ = embeds.shape
        if positions is None:
            positions = torch.arange(t, device=embeds.device)
        position_ids = positions.expand(b, t) if positions.dim() == 1 else positions
        attention_mask = None
        if mask is not None or segments is not None:
            mask = embeds.new_ones(b, t, dtype=torch.bool) if mask is None else mask.bool()
            allowed = allowed_keys(mask, segments)  # [B, 1, T, T]
            attention_mask = allowed
            if implementation == "eager":  # eager attention adds its mask to the scores
                attention_mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device).masked_fill_(
                    ~allowed, torch.finfo(embeds.dtype).min)
        with self._recording(return_hidden) as hidden:
            out = self.base(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        logits = self.model.get_output_embeddings()(out.last_hidden_state)
        return BackboneOutput(logits, tuple(hidden) if return_hidden else None)

    @contextmanager
    def _recording(self, enabled: bool) -> Iterator[list[Tensor]]:
        """The first block's input, then every block's output, recorded while the block runs."""
        hidden: list[Tensor] = []
        if not enabled:
            yield hidden
            return

        def block_input(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden.append(args[0] if args else kwargs["hidden_states"])

        def block_output(_module: nn.Module, _args: tuple, output: Any) -> None:
            hidden.append(output[0] if isinstance(output, tuple) else output)

        handles = [self.layers[0].register_forward_pre_hook(block_input, with_kwargs=True)]
        handles += [layer.register_forward_hook(block_output) for layer in self.layers]
        try:
            yield hidden
        finally:
            for handle in handles:
                handle.remove()

    # --- WeightDeltas

    def _delta_module(self, layer: int, name: str) -> nn.Module:
        return self.layers[layer].get_submodule(self.family.deltas[name].module)

    def delta_targets(self) -> dict[str, tuple[int, int]]:
        """Every block's linear maps, ``"layers.{i}.{name}"`` -> ``(out, in)``."""
        return {f"layers.{i}.{name}": _out_in(self._delta_module(i, name))
                for i in range(self.n_layers) for name in self.family.deltas}

    def _head_rows(self, device: torch.device) -> Tensor:
        """For each output row of GPT-NeoX's per-head [q_h; k_h; v_h] projection, its row in [q; k; v]."""
        d, heads = self.dim, self.model.config.num_attention_heads
        hd = d // heads
        row = torch.arange(3 * d, device=device)
        head, part, j = row // (3 * hd), (row % (3 * hd)) // hd, row % hd
        return part * d + head * hd + j

    def forward_with_deltas(
        self, embeds: Tensor, mask: Tensor | None, deltas: dict[str, tuple[Tensor, Tensor]], return_hidden: bool = False
    ) -> BackboneOutput:
        """`forward` with each named linear map W acting, for example b, as W + up[b] @ down[b]
        (``deltas[name] = (down [B, r, in], up [B, out, r])``, rows of ``wqkv`` in [q; k; v] order)."""
        unknown = sorted(set(deltas) - set(self.delta_targets()))
        if unknown:
            raise KeyError(f"no linear map {unknown}; the hf backbone's ({self.model.config.model_type}) are "
                           f"layers.<i>.{{{', '.join(self.family.deltas)}}}")
        handles = []
        try:
            for name, (down, up) in deltas.items():
                _, layer, short = name.split(".")
                if self.family.deltas[short].rows == "heads":
                    up = up[:, self._head_rows(up.device)]
                module = self._delta_module(int(layer), short)
                handles.append(module.register_forward_hook(functools.partial(_add_low_rank, down=down, up=up)))
            return self.forward(embeds, mask, return_hidden)
        finally:
            for handle in handles:
                handle.remove()

    # --- export

    def save_pretrained(self, directory: str) -> None:
        """The model in transformers' format: loads with ``AutoModelForCausalLM.from_pretrained``."""
        self.model.save_pretrained(directory)


def build_hf(config: HFConfig, *, vocab_size: int, **_: Any) -> HFBackbone:
    """Registry factory: the vocabulary comes from the task."""
    return HFBackbone(load_model(config, vocab_size), attention=config.attention, freeze=config.freeze)
