"""Which top-level DeepSpeed config keys does the installed version read? (DeepSpeed ignores unknown ones.)

  DS_ACCELERATOR=cpu python config_keys.py          # single process, world size 1
Passes a dict that records every top-level key looked up (get / [] / in / setdefault / pop) through
deepspeed.initialize, once with a plain config and once with each optional block switched on, and
prints the union, plus the keys DeepSpeed itself rejects as removed.
"""
import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT="29561").items():
    os.environ.setdefault(k, v)

import torch  # noqa: E402
import deepspeed  # noqa: E402
from deepspeed.runtime import config as ds_cfg  # noqa: E402

SEEN = set()
ITERATED = []


class RecordingKeys(set):
    def __contains__(self, k):
        SEEN.add(k)
        return super().__contains__(k)

    def __iter__(self):       # code that walks every key would see unknown keys too: note who
        ITERATED.append(sys._getframe(1).f_code.co_filename.split("site-packages/")[-1])
        return super().__iter__()


class Recording(dict):
    def get(self, k, *d):
        SEEN.add(k)
        return super().get(k, *d)

    def __getitem__(self, k):
        SEEN.add(k)
        return super().__getitem__(k)

    def __contains__(self, k):
        SEEN.add(k)
        return super().__contains__(k)

    def setdefault(self, k, *d):
        SEEN.add(k)
        return super().setdefault(k, *d)

    def pop(self, k, *d):
        SEEN.add(k)
        return super().pop(k, *d)

    def keys(self):           # `KEY in param_dict.keys()` is a common pattern in DeepSpeed
        return RecordingKeys(super().keys())

    def __copy__(self):          # DeepSpeedConfig does copy.copy(param_dict): keep recording
        return Recording(self)


base = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9}
variants = [{}, {"zero_optimization": {"stage": 2}}, {"bf16": {"enabled": True}}, {"fp16": {"enabled": True}},
            {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}},
            {"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 2}}},
            {"data_efficiency": {"enabled": True}}, {"flops_profiler": {"enabled": False}},
            {"activation_checkpointing": {}}, {"tensorboard": {"enabled": False}}]
deepspeed.init_distributed(dist_backend="gloo")
for v in variants:
    model = torch.nn.Linear(4, 4)
    opt = None if "optimizer" in v else torch.optim.AdamW(model.parameters())
    try:
        deepspeed.initialize(model=model, optimizer=opt, config=Recording({**base, **v}))
    except Exception as e:  # a variant that cannot run on CPU still records what it read first
        print(f"variant {list(v) or 'base'}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)

removed = sorted(ds_cfg._REMOVED_TOP_LEVEL_CONFIG_KEYS)
print(json.dumps({"deepspeed": deepspeed.__version__, "read_top_level_keys": sorted(map(str, SEEN)),
                  "removed_keys_rejected_by_deepspeed": removed,
                  "code_that_iterated_keys": sorted(set(ITERATED))}, indent=1))
