"""The meta-trained backbone of an `hf` run in transformers' format: `ttt-hf-export RUN [OUT]`
(or ``python -m ttt_plugin_hf.export``).

Writes ``OUT`` (default ``RUN/hf``) with ``save_pretrained``: ``config.json`` plus the weights, as the
run's checkpoint holds them. It loads with ``AutoModelForCausalLM.from_pretrained(OUT)`` in plain
transformers, or back as a backbone with ``[backbone] name = "hf"`` and ``path = OUT``. What the
framework adds around the backbone (memory tokens, writer, inner learning rates) has no place in
that format and stays in the checkpoint. A run whose task ran on the model's own tokenizer (`[backbone]
tokenizer`) writes that tokenizer beside the weights; a task's own tokenizer (the retrieval task's
characters: `ttt_core.tokenizer.CharTokenizer`) is no transformers tokenizer and is not written.

A command of this plugin rather than ``ttt export``: the core CLI has no export command nor a hook
for plugins to add one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ttt_core.errors import TTTError


def export_run(run_dir: str | Path, out: str | Path | None = None, checkpoint: str | None = None) -> Path:
    """Write the backbone of a run's checkpoint (default: the latest) with ``save_pretrained``; return the directory."""
    from ttt_core.train.evaluate import load_run

    from ttt_plugin_hf.backbone import HFBackbone
    from ttt_plugin_hf.tokenizer import ModelTokenizer

    run = load_run(run_dir, checkpoint)
    backbone = run.built.model.backbone
    if not isinstance(backbone, HFBackbone):
        raise TTTError(f"{run_dir}: its backbone is not hf; only an hf backbone is a transformers model")
    directory = Path(run_dir) / "hf" if out is None else Path(out)
    backbone.save_pretrained(str(directory))
    tokenizer = getattr(run.built.task, "tokenizer", None)
    if isinstance(tokenizer, ModelTokenizer):
        tokenizer.save_pretrained(str(directory))
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ttt-hf-export",
        description="Write an hf run's trained backbone with save_pretrained, loadable in plain transformers.")
    parser.add_argument("run_dir", help="a run directory of a recipe with [backbone] name = \"hf\"")
    parser.add_argument("out", nargs="?", help="directory to write (default: RUN_DIR/hf)")
    parser.add_argument("--checkpoint", help="checkpoint file (default: the latest)")
    args = parser.parse_args(argv)
    try:
        print(export_run(args.run_dir, args.out, args.checkpoint))
    except TTTError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
