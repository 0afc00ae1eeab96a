"""Test exact match of a BABILong run on each bAbI task and their mean: BABILong's headline.

A `babilong_mix` run is evaluated on each of its tasks (`--set "task.tasks=['qaN']"` gives exactly
`babilong_qaN`'s samples); a run of one task gives its one row (another task through `task.name`
would reset the task's other options, its length among them). `--length 1k` tests at another length
than trained. Writes `RUN/babilong_by_task[-LENGTH].md` (and prints it).

    python bench/babilong_by_task.py RUN_DIR [--tasks qa1,qa2] [--samples 1000] [--checkpoint best] [--length 1k]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ttt_core.objective import evaluate
from ttt_core.train.evaluate import load_run

# Published fine-tuned results, mean over qa1-qa5 (%), from ../shared/MISSION.md.
PUBLISHED = "RMT (137M) 99 at 0k, 92 at 4k; ARMT (137M) 99 at 0k, 98 at 4k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--tasks", help="comma-separated, e.g. qa1,qa3 (default: the run's)")
    parser.add_argument("--samples", type=int, default=1000, help="test samples per task")
    parser.add_argument("--checkpoint", help="'last' (default), 'best' or a file")
    parser.add_argument("--length", help="context length to test at, e.g. 1k (default: the run's)")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = [f"task.test_samples={args.samples}", f"eval.samples={args.samples}"] + ([f"task.length='{args.length}'"] if args.length else [])
    run = load_run(args.run_dir, args.checkpoint, base)
    spec = run.recipe.components["task"]
    name = spec.component.name
    if name == "babilong_mix":
        tasks = args.tasks.split(",") if args.tasks else list(spec.config.tasks)
    elif name.startswith("babilong_qa") and args.tasks in (None, name.removeprefix("babilong_")):
        tasks = [name.removeprefix("babilong_")]
    else:
        raise SystemExit(f"{args.run_dir}: task {name!r} is not babilong_mix (--tasks) or the BABILong task asked for")

    rows = []
    for qa in tasks:
        loaded = load_run(args.run_dir, args.checkpoint, [*base, f"task.tasks=['{qa}']"]) if name == "babilong_mix" else run
        result = evaluate(loaded.built.model, loaded.built.task, "test", args.samples, loaded.recipe.eval.batch_size,
                          loaded.device, loaded.recipe.train.precision)
        rows.append((qa, result["exact_match"], result["samples"]))
        print(f"{qa}: {100 * result['exact_match']:.2f}% of {result['samples']}", flush=True)

    length = args.length or spec.config.length
    mean = sum(r[1] for r in rows) / len(rows)
    lines = [
        f"# {Path(args.run_dir).name}: test exact match by task at {length}",
        "",
        f"Checkpoint `{run.checkpoint.name}` (step {run.step}); command: "
        f"`python bench/babilong_by_task.py {' '.join(sys.argv[1:])}`",
        "",
        "| task | exact match | test samples |",
        "|---|---|---|",
        *(f"| {qa} | {100 * em:.2f}% | {n} |" for qa, em, n in rows),
        f"| **mean** | **{100 * mean:.2f}%** | |",
        "",
        f"Published, fine-tuned, mean over qa1-qa5: {PUBLISHED}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    suffix = f"-{args.length}" if args.length else ""
    (Path(args.run_dir) / f"babilong_by_task{suffix}.md").write_text(text)


if __name__ == "__main__":
    main()
