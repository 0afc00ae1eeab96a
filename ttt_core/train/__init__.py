"""Training in one process: the outer loop (`trainer`), how a step runs (`backends`), checkpoints,
the run directory and its reports, curricula (`stages`), and `ttt eval` / `ttt plot` / `ttt data`.

The loss and evaluation of a step live outside, in `ttt_core.objective`; DeepSpeed ranks in
`ttt_core.distributed`, which builds on this package (never the other way round).
"""
