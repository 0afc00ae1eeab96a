"""Time a TTT-Linear layer against causal self-attention (torch SDPA) of the same width.

    python bench/ttt_layers.py [--lengths 1024 2048 ... 32768] [--hidden 768 --heads 12]
                               [--out bench/results/ttt_layers.md]

For every length: forward time (no grad, i.e. prefill) and forward+backward time (training) of both
layers, after a warm-up at the first length, the minimum over `--repeats` runs. Two clocks: the
process's CPU time (user + system, so page faults count) and wall time. On a CPU shared with other
jobs, single-threaded (`--threads 1`, the default) CPU time is the stable measure: it leaves out the
time the process waited for a core, which wall time includes.
The paper's claim to check: TTT-Linear grows linearly with length and is faster than attention from
8k on. The table is printed and, with --out, written as Markdown with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:
    from ttt_plugin_layers import TTTLayerConfig
    from ttt_plugin_layers.layer import TTTLayer
except ImportError:  # running from a checkout without the plugin installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "ttt-plugin-layers"))
    from ttt_plugin_layers import TTTLayerConfig
    from ttt_plugin_layers.layer import TTTLayer


class CausalAttention(nn.Module):
    """Multi-head causal self-attention with the same projections as the TTT layer (q, k, v, o)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, n, C = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, n, C))


def timed(fn, repeats: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds), each the minimum over `repeats` runs."""
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return min(cpu), min(wall)


def bench(layer: nn.Module, x: torch.Tensor, repeats: int, warmup: bool = False) -> list[tuple[float, float]]:
    def fwd() -> None:
        with torch.no_grad():
            layer(x)

    def fwd_bwd() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    if warmup:
        fwd()
        fwd_bwd()
    return [timed(fwd, repeats), timed(fwd_bwd, repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--mini-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per point (minimum); attention: at most 2 from 16k on")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, help="write the table as Markdown here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    ttt = TTTLayer(TTTLayerConfig(hidden_size=args.hidden, num_heads=args.heads, mini_batch_size=args.mini_batch,
                                  kernel="torch")).to(args.device, dtype)
    attn = CausalAttention(args.hidden, args.heads).to(args.device, dtype)

    header = "| length | TTT-Linear fwd | attention fwd | TTT-Linear fwd+bwd | attention fwd+bwd |"
    rows = []  # (n, {clock: (ttt fwd, attn fwd, ttt fwd+bwd, attn fwd+bwd)})
    print("CPU s / wall s\n" + header, flush=True)
    for i, n in enumerate(args.lengths):
        x = torch.randn(args.batch, n, args.hidden, device=args.device, dtype=dtype)
        (t_f, t_fb) = bench(ttt, x, args.repeats, warmup=i == 0)
        (a_f, a_fb) = bench(attn, x, args.repeats if n < 16384 else min(args.repeats, 2), warmup=i == 0)
        times = {clock: (t_f[clock], a_f[clock], t_fb[clock], a_fb[clock]) for clock in (0, 1)}
        rows.append((n, times))
        print(f"| {n} | " + " | ".join(f"{times[0][j]:.3f} / {times[1][j]:.3f}" for j in range(4)) + " |", flush=True)

    def table(clock: int) -> list[str]:
        return [header, "|---|---|---|---|---|",
                *(f"| {n} | " + " | ".join(f"{t:.3f}" for t in times[clock]) + " |" for n, times in rows)]

    def summary(clock: int) -> list[str]:
        by_len = {n: times[clock] for n, times in rows}
        lines = []
        if 8192 in by_len and 32768 in by_len:
            r8, r32 = by_len[8192], by_len[32768]
            lines.append(f"TTT-Linear 32k/8k: forward {r32[0] / r8[0]:.2f}x, forward+backward {r32[2] / r8[2]:.2f}x "
                         f"(linear = 4x; attention: {r32[1] / r8[1]:.2f}x, {r32[3] / r8[3]:.2f}x).")
        faster = [n for n, t in by_len.items() if t[0] < t[1] and t[2] < t[3]]
        lines.append(f"TTT-Linear faster than attention in both forward and forward+backward at lengths: {faster}.")
        return lines

    for clock, name in ((0, "CPU time"), (1, "wall time")):
        for line in summary(clock):
            print(f"{name}: {line}")

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        lines = [
            "# TTT-Linear vs causal attention (torch SDPA)",
            "",
            f"Command: `{cmd}`",
            "",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.dtype}.",
            f"Layer width {args.hidden}, {args.heads} heads, batch {args.batch}, TTT mini-batch {args.mini_batch}. "
            f"Minimum over {args.repeats} runs ({min(args.repeats, 2)} for attention from 16k on, where one run "
            "takes minutes). The cores are shared with other jobs, so CPU time (user + system of this "
            "single-threaded process) is the primary measure; wall time is given too.",
            "",
            "## CPU time (s)",
            "",
            *table(0),
            "",
            *summary(0),
            "",
            "## Wall time (s)",
            "",
            *table(1),
            "",
            *summary(1),
            "",
        ]
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
