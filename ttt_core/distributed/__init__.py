"""Multi-process training through DeepSpeed.

- `config`: the `[deepspeed]` table, checked and completed (no torch, no deepspeed: `ttt validate`).
- `launch`: `ttt run --nproc N`: what can be checked without processes, then N ranks on this node.
- `worker`: one rank (``python -m ttt_core.distributed.worker``), also under torchrun or `deepspeed`.
- `engine`: `DeepSpeedStep`, the trainer's step backend inside a DeepSpeed engine.

Nothing is imported here, so that `config` stays cheap to import.
"""
