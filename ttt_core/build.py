"""Turn a validated recipe into live objects, in the order their contexts require."""

from __future__ import annotations

import attrs
import torch

from ttt_core.model import MetaModel
from ttt_core.recipe import Recipe


@attrs.define
class Built:
    task: object
    model: MetaModel
    optimizer: object


def build_task(recipe: Recipe):
    return recipe["task"].build()


def build_model(recipe: Recipe, task) -> MetaModel:
    backbone = recipe["backbone"].build(vocab_size=task.tokenizer.vocab_size)
    writer = recipe["memory.writer"].build(dim=backbone.dim)
    learner = recipe["memory.learner"].build(backbone=backbone, writer=writer)
    recurrence = recipe["recurrence"].build(backbone=backbone, inner=recipe.inner)
    return MetaModel(backbone, learner, writer, recurrence, recipe.inner)


def build(recipe: Recipe, device: torch.device | str = "cpu") -> Built:
    torch.manual_seed(recipe.train.seed)
    task = build_task(recipe)
    model = build_model(recipe, task).to(device)
    optimizer = recipe["optimizer"].build(model=model, total_steps=recipe.train.steps)
    return Built(task=task, model=model, optimizer=optimizer)
