"""The plugin API of `ttt`: every hook a plugin may implement.

A plugin is a module (or object) with functions decorated by `ttt_core.hookimpl`, exposed through
an entry point in the group `ttt`::

    # pyproject.toml
    [project.entry-points.ttt]
    my_memory = "my_memory.plugin"

A hook implementation whose name is not listed here is an error (`ttt plugins` shows it), so a
misspelled hook never fails silently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ttt_core.registry import ProviderRegistry
    from ttt_core.train.tracking import LoggerFactory

PROJECT = "ttt"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ttt_register_components(registry: ProviderRegistry) -> None:
    """Add components to the registry.

    Call ``registry.add(kind, name, config=ConfigClass, factory=build_fn, aliases=(...),
    description="one line")`` once per component (``slots``, ``provides`` and ``needs`` declare
    which optional slots a recurrence uses and the capabilities validation checks: see
    ``ttt_core.registry.ProviderRegistry.add``). ``kind`` is a name of ``ttt_core.kinds.KINDS_TABLE``
    (``ttt list`` shows them). ``ConfigClass`` is an
    attrs class whose fields are the options a recipe may set in the component's table;
    ``build_fn(config, **context)`` builds the component when a run needs it (the context each
    kind receives is documented in ``ttt_core.interfaces``). Keep the module that holds this hook
    cheap to import: import torch and friends inside ``build_fn``, or give ``factory`` as a
    ``"package.module:function"`` string.
    """


@hookspec
def ttt_metrics_loggers() -> dict[str, LoggerFactory | str]:
    """Metrics loggers this plugin provides (W&B, MLflow, ...): ``{name: factory}``.

    A recipe turns one on with a table ``[logging.loggers.NAME]`` whose keys are its options. On rank 0
    of a run, ``factory(options, run_dir, recipe)`` (a callable, or a ``"package.module:function"``
    string imported only then) returns an object with the methods of
    ``ttt_core.train.tracking.MetricsLogger``: ``start(info)`` once (parameter count, device, command,
    git commit, resolved recipe, step), ``log(split, step, values)`` for each record of
    ``metrics.jsonl`` (training records are means over ``train.log_every`` steps) and ``close()`` when the
    run ends, stops or fails. Raise ``ttt_core.errors.TTTError`` for bad options (one line). Keep the
    module cheap to import: import the logging library inside the factory.
    """
