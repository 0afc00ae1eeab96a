"""Turn a DeepSpeed checkpoint (ZeRO 0/1/2) into a plain fp32 state dict on CPU, no process group.

  python consolidate.py CKPT_DIR [TAG]     # prints which route worked and the sum of all tensors
"""
import glob
import os
import sys

import torch


def consolidate(ckpt_dir, tag=None):
    tag = tag or open(os.path.join(ckpt_dir, "latest")).read().strip()
    if glob.glob(os.path.join(ckpt_dir, tag, "zero_pp_rank_*_optim_states.pt")) or \
            glob.glob(os.path.join(ckpt_dir, tag, "bf16_zero_pp_rank_*_optim_states.pt")):
        # ZeRO 1/2 (and 3): fp32 master weights are spread over the per-rank optimizer files
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        return "zero_to_fp32", get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag)
    # ZeRO 0: the full module state dict (in the training dtype) is in mp_rank_00_model_states.pt
    sd = torch.load(os.path.join(ckpt_dir, tag, "mp_rank_00_model_states.pt"), map_location="cpu",
                    weights_only=False)
    return "module", {k: v.float() for k, v in sd["module"].items()}


if __name__ == "__main__":
    route, sd = consolidate(*sys.argv[1:])
    print(route, {k: (tuple(v.shape), str(v.dtype)) for k, v in sd.items()})
    print(f"sum {sum(v.double().sum().item() for v in sd.values()):.10f}")
