"""The `ttt` command line."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from ttt_core.errors import TTTError, did_you_mean
from ttt_core.registry import KINDS


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.steps=100 (TOML-typed; repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttt",
        description="Meta-learned test-time-training memory: build, train and compare from TOML recipes.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also TTT_DEBUG=1)")
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="train a recipe (or resume a run directory)")
    run.add_argument("recipe", help="a recipe .toml, a shipped recipe's name (ttt recipes), or a run directory to resume")
    run.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    run.add_argument(
        "--nproc",
        type=int,
        help="ranks on this node for [distributed] backend = \"deepspeed\" (default: 1, or as many as the "
        "checkpoint being resumed was saved by)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar or progress lines (validation lines stay)")
    run.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                     help="run the grid of these values (repeatable), one run directory each under --out, and "
                     "print a summary table")
    run.add_argument("--parallel", type=int, default=1, metavar="N", help="with --sweep: N runs at a time (subprocesses)")
    _add_set(run)

    evaluate = commands.add_parser("eval", help="evaluate a run's checkpoint (printed, and kept in RUN/eval/)")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--split", default="test", choices=("val", "test"))
    evaluate.add_argument("--checkpoint", help="'last' (default), 'best' (the best validation), or a checkpoint file")
    _add_set(evaluate)

    plot = commands.add_parser("plot", help="write PNG learning curves of one or more runs")
    plot.add_argument("run_dirs", nargs="+", help="run directories (a curriculum's: its stages one after another)")
    plot.add_argument("--out", help="PNG file to write (default: curves.png, or the first free curves-N.png)")
    plot.add_argument("--force", action="store_true", help="replace --out if it exists")
    plot.add_argument("--metric", help="a logged metric to draw for every split that logged it "
                      "(default: training loss and the validation headline)")
    plot.add_argument("--smooth", type=int, default=1, metavar="N", help="draw training curves as the mean of the last N records")

    data = commands.add_parser("data", help="print decoded samples of a recipe's task")
    data.add_argument("recipe")
    data.add_argument("-n", type=int, default=3, help="number of samples")
    data.add_argument("--split", default="train", choices=("train", "val", "test"))
    data.add_argument("--write", metavar="FILE", help="write the split as JSON lines / parquet instead")
    _add_set(data)

    validate = commands.add_parser("validate", help="check recipes without building models (exit 0/1)")
    validate.add_argument("recipes", nargs="+")
    _add_set(validate)

    show = commands.add_parser("show", help="print the fully resolved recipe as TOML")
    show.add_argument("recipe")
    _add_set(show)

    commands.add_parser("plugins", help="list plugins, their components and load errors")

    commands.add_parser("recipes", help="list the shipped recipes with their description and the plugins they need")

    cp = commands.add_parser("cp", help="copy a shipped recipe to edit (its extends then name shipped recipes)")
    cp.add_argument("name", help="a shipped recipe (ttt recipes), e.g. baseline_ar_n1 or tiny/baseline_ar_tiny")
    cp.add_argument("dest", help="file or directory to write")
    cp.add_argument("--force", action="store_true", help="replace dest if it exists")

    list_ = commands.add_parser("list", help="list components (or a standard table) with each option's meaning and allowed values")
    list_.add_argument("kind", nargs="?", help=f"one of: {', '.join(KINDS)}; or a table: {', '.join(TABLE_NAMES)}")
    return parser


TABLE_NAMES = ("train", "eval", "inner", "distributed", "logging")


def version_text() -> str:
    from importlib import metadata

    from ttt_core.plugins import core_version

    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return f"ttt (ttt-core) {core_version()}, torch {torch}, Python {sys.version.split()[0]}"


def cmd_validate(args: argparse.Namespace) -> int:
    from ttt_core.recipe import load_recipe

    failed = 0
    for path in args.recipes:
        try:
            load_recipe(path, args.overrides)
        except TTTError as exc:
            failed += 1
            print("\n".join(exc.lines), file=sys.stderr)
        else:
            print(f"ok {path}")
    return 1 if failed else 0


def cmd_show(args: argparse.Namespace) -> int:
    from ttt_core.recipe import dumps_toml, load_recipe

    print(dumps_toml(load_recipe(args.recipe, args.overrides).resolved()), end="")
    return 0


def cmd_plugins(_args: argparse.Namespace) -> int:
    from ttt_core.plugins import default_host

    host = default_host()
    for info in host.plugins:
        print(f"{info.name}: {info.distribution} {info.version} ({info.module})")
        if info.error:
            print(f"  ERROR: {info.error}")
        for kind, name in info.components:
            print(f"  {kind}: {name}")
        for impl in host.manager.hook.ttt_metrics_loggers.get_hookimpls():
            if impl.plugin_name == info.name:
                try:
                    names = sorted(impl.function() or {})
                except Exception as exc:  # noqa: BLE001 - a plugin's hook
                    names = [f"(ttt_metrics_loggers failed: {type(exc).__name__}: {exc})"]
                for name in names:
                    print(f"  logger: {name}  ([logging.loggers.{name}])")
    return 0


def print_options(cls: type, indent: str) -> None:
    """Each option: type, default, allowed values (from its validator) and meaning (its docstring)."""
    import attrs

    from ttt_core.recipe import options_of
    from ttt_core.recipe.structure import describe_validator, option_docs

    docs = option_docs(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    for name, type_, default in options_of(cls):
        allowed = describe_validator(fields[name].validator)
        print(f"{indent}{name}: {type_} = {default!r}" + (f"  ({allowed})" if allowed else ""))
        if name in docs:
            print(f"{indent}    {docs[name]}")


def cmd_list(args: argparse.Namespace) -> int:
    from ttt_core.plugins import default_host
    from ttt_core.recipe import TABLES

    if args.kind in TABLES:
        print(f"[{args.kind}]: {(TABLES[args.kind].__doc__ or '').strip().split(': ', 1)[-1]}")
        print_options(TABLES[args.kind], "  ")
        return 0
    host = default_host()
    if args.kind is not None and args.kind not in KINDS:
        known = [*KINDS, *TABLES]
        raise TTTError(f"unknown kind '{args.kind}'{did_you_mean(args.kind, known)}; kinds: {', '.join(KINDS)}; "
                       f"tables: {', '.join(TABLES)}")
    for kind in [args.kind] if args.kind else KINDS:
        print(f"{kind}:")
        for component in host.registry[kind]:
            aliases = f" (aliases: {', '.join(component.aliases)})" if component.aliases else ""
            print(f"  {component.name}{aliases}  [{component.provider.distribution} {component.provider.version}]")
            if component.description:
                print(f"      {component.description}")
            print_options(component.config, "      ")
    broken = host.broken()
    if broken:
        print("\nplugins that failed to load (see `ttt plugins`): " + ", ".join(broken))
    if args.kind is None:
        print(f"\nstandard tables (ttt list TABLE): {', '.join(TABLES)}")
    return 0


def cmd_recipes(_args: argparse.Namespace) -> int:
    from ttt_core.recipe.catalog import recipe_rows

    print(recipe_rows(), end="")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    from ttt_core.recipe.catalog import copy_recipe

    written, notes = copy_recipe(args.name, args.dest, force=args.force)
    for note in notes:
        print(note, file=sys.stderr)
    print(written)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ttt_core.run import run_command

    if args.sweep:
        from ttt_core.sweep import run_sweep

        if args.nproc not in (None, 1):
            raise TTTError("--sweep trains each run in one process; leave out --nproc")
        return run_sweep(args.recipe, args.out, args.overrides, args.sweep, parallel=args.parallel, quiet=args.quiet)
    if args.parallel != 1:
        raise TTTError("--parallel applies to --sweep only")

    return run_command(args.recipe, out=args.out, overrides=args.overrides, nproc=args.nproc, quiet=args.quiet,
                       command=args.command_line)


def cmd_eval(args: argparse.Namespace) -> int:
    from ttt_core.train.evaluate import eval_command

    return eval_command(args.run_dir, split=args.split, checkpoint=args.checkpoint, overrides=args.overrides)


def cmd_plot(args: argparse.Namespace) -> int:
    from ttt_core.train.plot import plot_runs

    print(plot_runs(args.run_dirs, args.out, metric=args.metric, smooth=args.smooth, force=args.force))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from ttt_core.train.data import data_command

    return data_command(args.recipe, n=args.n, split=args.split, write=args.write, overrides=args.overrides)


COMMANDS = {
    "run": cmd_run,
    "eval": cmd_eval,
    "plot": cmd_plot,
    "data": cmd_data,
    "validate": cmd_validate,
    "show": cmd_show,
    "plugins": cmd_plugins,
    "list": cmd_list,
    "recipes": cmd_recipes,
    "cp": cmd_cp,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["ttt", *argv])
    if args.command is None:
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("TTT_DEBUG", "") not in ("", "0")
    try:
        return COMMANDS[args.command](args)
    except TTTError as exc:
        if debug:
            raise
        print("\n".join(exc.lines), file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ttt list | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)


if __name__ == "__main__":
    sys.exit(main())
