"""What DeepSpeed says (or doesn't) about malformed configs. Single process, world size 1.

  DS_ACCELERATOR=cpu python config_errors.py
"""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT="29562").items():
    os.environ.setdefault(k, v)
import logging  # noqa: E402

import torch  # noqa: E402
import deepspeed  # noqa: E402

deepspeed.utils.logger.setLevel(logging.ERROR)
deepspeed.init_distributed(dist_backend="gloo")
base = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": 10 ** 9}
cases = {
    "unknown top-level key (typo gradient_cliping)": {**base, "gradient_cliping": 1.0},
    "unknown key inside zero_optimization": {**base, "zero_optimization": {"stage": 1, "overlap_comms": True},
                                             "zero_allow_untested_optimizer": True},
    "ZeRO 1 + client torch AdamW without zero_allow_untested_optimizer": {**base, "zero_optimization": {"stage": 1}},
    "ZeRO 1 + client torch SGD without zero_allow_untested_optimizer": {**base, "zero_optimization": {"stage": 1}},
    "no gradient_clipping key (what is the default?)": dict(base),
    "train_batch_size inconsistent": {**base, "train_batch_size": 3, "gradient_accumulation_steps": 1},
    "'auto' value (HF Trainer convention)": {**base, "gradient_clipping": "auto"},
    "client optimizer AND optimizer block": {**base, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}},
    "removed key 'elasticity'": {**base, "elasticity": {"enabled": False}},
    "fp16 on CPU": {**base, "fp16": {"enabled": True}},
}
for name, cfg in cases.items():
    model = torch.nn.Linear(4, 4)
    try:
        opt = (torch.optim.SGD if "SGD" in name else torch.optim.AdamW)(model.parameters(), lr=0.1)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
        print(f"- {name}: ACCEPTED silently (gradient_clipping={engine.gradient_clipping()!r}, "
              f"optimizer={type(engine.optimizer).__name__}/{type(engine.basic_optimizer).__name__})")
    except BaseException as e:  # noqa: BLE001
        msg = " ".join(str(e).split())
        print(f"- {name}: {type(e).__name__}: {msg[:300]}")
