"""Test exact match of an associative-retrieval run split by where the queried pair was written:
which context segment, and how many pairs that segment holds. Tells a memory that forgets earlier
segments (good on the last segment only) from one that cannot write at all. The character columns
(teacher-forced, like the metric) tell a memory that cannot pick the pair by its key (first
character a coin flip between the pairs' first characters, later ones right: each later character
is keyed by the one before it) from one that stores values badly.

    python bench/accuracy_by_segment.py RUN_DIR [--split test] [--checkpoint PATH] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from ttt_core.train.evaluate import load_run
from ttt_core.objective import step_loss


def percent(values: list[float]) -> str:
    return f"{100 * sum(values) / len(values):.2f}%" if values else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_run(args.run_dir, args.checkpoint, args.set)
    recipe, model, task = run.recipe, run.built.model.eval(), run.built.task
    samples = recipe.eval.samples if args.split == "test" else recipe.eval.val_samples
    hits: dict[tuple[int, int], list[float]] = defaultdict(list)
    others: dict[tuple[int, int], list[float]] = defaultdict(list)
    first: dict[tuple[int, int], list[float]] = defaultdict(list)  # first character right
    first_other: dict[tuple[int, int], list[float]] = defaultdict(list)  # ... another pair's (and wrong)
    later: dict[tuple[int, int], list[float]] = defaultdict(list)  # the other characters right
    size = recipe.eval.batch_size
    for start in range(0, samples, size):
        indices = range(start, min(start + size, samples))
        episode = task.batch(args.split, indices).to(run.device)
        _, out = step_loss(model, episode, precision=recipe.train.precision)
        correct = task.metrics(out.logits.detach(), episode)["exact_match"].float().tolist()
        answers = out.logits.detach().argmax(-1)
        for row, (index, right) in enumerate(zip(indices, correct)):
            sample = task.sample(args.split, index)
            pair = f"!{sample.key}:{sample.value}!"
            segment = next(i for i, text in enumerate(sample.segments) if pair in text)
            where = (segment, sample.segments[segment].count(":"))  # the pair's segment, its pair count
            hits[where].append(right)
            answer = task.tokenizer.decode(answers[row])[: len(sample.value)]
            other_values = [value for key, value in sample.pairs if key != sample.key]
            others[where].append(float(answer in other_values))
            first[where].append(float(answer[:1] == sample.value[:1]))
            first_other[where].append(float(answer[:1] != sample.value[:1] and answer[:1] in [v[:1] for v in other_values]))
            if len(sample.value) > 1:
                later[where].append(sum(a == b for a, b in zip(answer[1:], sample.value[1:])) / (len(sample.value) - 1))
    print(f"{run.checkpoint} (step {run.step}), {args.split}, {samples} samples")
    tables = (hits, others, first, first_other, later)
    print("| segment of the queried pair | pairs in that segment | samples | exact match | another pair's value "
          "| first character right | first character another pair's | later characters right |")
    print("|---|---|---|---|---|---|---|---|")
    for key, values in sorted(hits.items()):
        print(f"| {key[0]} | {key[1]} | {len(values)} | {' | '.join(percent(table[key]) for table in tables)} |")
    every = [[v for values in table.values() for v in values] for table in tables]
    print(f"| all | | {len(every[0])} | {' | '.join(percent(values) for values in every)} |")


if __name__ == "__main__":
    main()
