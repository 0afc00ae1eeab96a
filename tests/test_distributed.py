"""Training through DeepSpeed on CPU (gloo), 2 ranks, the tiny recipe.

Process start-up dominates, so launches are few: one 2-rank and one 1-rank launch train every engine
configuration (ZeRO 0/1/2 x first/second order) one after another (`distributed_script.py`), and the
resume and fault tests go through `ttt run --nproc 2` itself. Config errors need no processes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

from ttt_core.distributed import config as deepspeed_config
from ttt_core.cli import main
from ttt_core.errors import RecipeError, TTTError
from ttt_core.recipe import load_recipe

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "recipes" / "tiny" / "baseline_ar_tiny.toml")
SCRIPT = str(Path(__file__).parent / "distributed_script.py")


def deepspeed_importable() -> bool:
    if find_spec("deepspeed") is None:
        return False
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # no accelerator probing (and its warning)
    try:
        import deepspeed  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install skips like a missing one
        return False
    return True


needs_deepspeed = pytest.mark.skipif(not deepspeed_importable(), reason="deepspeed is not importable")

COMMON = ["distributed.backend='deepspeed'", "train.log_every=1", "train.eval_every=100", "eval.samples=16"]
STAGES, ORDERS = (0, 1, 2), ("first", "second")
RUNS = {
    f"z{stage}-{order}": [*COMMON, f"deepspeed.zero_optimization.stage={stage}", f"inner.grad_mode='{order}'", "train.steps=4"]
    for stage in STAGES
    for order in ORDERS
}
POISONED = [1, 2]  # optimizer steps (0-based) whose loss is NaN on rank 1 of run "z2-nan"
# uninterrupted reference for the resume test (same overrides as test_save_resume_on_two_ranks)
RESUME = [*COMMON, "deepspeed.zero_optimization.stage=2", "inner.grad_mode='second'", "train.checkpoint_every=3"]


def env() -> dict[str, str]:
    """Subprocesses import this checkout's ttt_core; one thread per rank (a single rank would otherwise
    take every core, which is slow on a small shared CI machine); a rank killed by a signal prints
    every thread's Python stack (faulthandler), so a crash says where it happened."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def launch_script(tmp: Path, nproc: int, runs: dict[str, list[str]], poison=None) -> dict[str, list[dict]]:
    out = tmp / f"results_{nproc}.json"
    spec = {"recipe": TINY, "root": str(tmp / f"world{nproc}"), "out": str(out), "runs": runs, "poison": poison or {}}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "--max-restarts", "0", SCRIPT, json.dumps(spec)]
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, errors(done.stderr)
    return json.loads(out.read_text())


def ttt_run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ttt_core.cli", "run", *args, "--quiet"], env=env(),
                          capture_output=True, text=True, timeout=timeout)


def errors(stderr: str) -> str:
    """The lines of a failed launch that say why: a crashed rank's report (faulthandler's stacks, or
    C++'s "terminate called") and the launcher's closing table of every rank's exit code."""
    lines = stderr.splitlines()
    crash = next((i for i, line in enumerate(lines) if line.startswith(("Fatal Python", "terminate called"))), None)
    said = [line for line in lines if "Error" in line or "[rank" in line][-20:]
    report = lines[crash : crash + 60] if crash is not None else said
    return "\n".join([*report, "...", *lines[-25:]])


def train_losses(records: list[dict]) -> list[float]:
    return [r["loss"] for r in records if r["split"] == "train"]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """{world: {run name: metrics records}}: 2 ranks x b and 1 rank x 2b (and 1 rank x b x 2 accumulation)."""
    tmp = tmp_path_factory.mktemp("ds")
    two = launch_script(tmp, 2, {**RUNS, "resume-straight": [*RESUME, "train.steps=6"], "z2-nan": RUNS["z2-first"]},
                        poison={"z2-nan": POISONED})
    one = launch_script(tmp, 1, {**RUNS, "z1-first-gas2": [*RUNS["z1-first"], "deepspeed.gradient_accumulation_steps=2"]})
    return {2: two, 1: one, "root": tmp}


# --- the engine step ------------------------------------------------------------------------------


@needs_deepspeed
@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_equal_one_rank_with_the_whole_batch(launched, name):
    two, one = launched[2][name], launched[1][name]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3, 4, 4]
    for a, b in zip(two, one):
        for key in ("loss", "exact_match", "grad_norm", "lr", "inner_loss", "memory_norm"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    if name == "z1-first":  # micro-batch b with 2 accumulation steps: the same batches again
        assert train_losses(launched[1]["z1-first-gas2"]) == pytest.approx(train_losses(one), rel=1e-5, abs=1e-6)


@needs_deepspeed
@pytest.mark.parametrize("order", ORDERS)
def test_deepspeed_equals_one_process_without_it(launched, tmp_path, order):
    from ttt_core.train.trainer import Trainer

    overrides = [o for o in RUNS[f"z0-{order}"] if not o.startswith(("distributed", "deepspeed"))]
    Trainer(load_recipe(TINY, overrides), tmp_path / "plain", quiet=True).run()
    plain = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    for stage in STAGES:
        assert train_losses(launched[2][f"z{stage}-{order}"]) == pytest.approx(train_losses(plain), rel=1e-5, abs=1e-6)


@needs_deepspeed
def test_a_non_finite_loss_on_one_rank_skips_the_step_on_all(launched, tmp_path, monkeypatch):
    """As in one process: no update, the schedule moves on, nothing logged for the skipped steps."""
    import ttt_core.train.backends as backends
    from ttt_core.train.trainer import Trainer

    real, calls = backends.step_loss, iter(range(10**9))

    def poisoned(*args, **kwargs):
        loss, out = real(*args, **kwargs)
        return (loss * float("nan") if next(calls) in POISONED else loss), out

    monkeypatch.setattr(backends, "step_loss", poisoned)
    overrides = [o for o in RUNS["z2-first"] if not o.startswith(("distributed", "deepspeed"))]
    with pytest.warns(UserWarning, match="non-finite loss, step skipped"):
        Trainer(load_recipe(TINY, overrides), tmp_path / "plain", quiet=True).run()
    plain = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    nan = launched[2]["z2-nan"]
    assert [r["step"] for r in nan] == [r["step"] for r in plain] == [1, 4, 4]
    assert train_losses(nan) == pytest.approx(train_losses(plain), rel=1e-5, abs=1e-6)
    assert nan[1]["lr"] == plain[1]["lr"] == launched[2]["z2-first"][3]["lr"]


# --- checkpoints ----------------------------------------------------------------------------------


@needs_deepspeed
def test_save_resume_on_two_ranks_and_eval(launched, tmp_path, capsys):
    run_dir = str(tmp_path / "split")
    sets = [a for o in RESUME for a in ("--set", o)]
    first = ttt_run(TINY, "--nproc", "2", "--out", run_dir, *sets, "--set", "train.steps=3")
    assert first.returncode == 0, errors(first.stderr)
    second = ttt_run(run_dir, "--set", "train.steps=6")  # resume from the run directory, with its 2 ranks
    assert second.returncode == 0, errors(second.stderr)
    split = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    straight = launched[2]["resume-straight"]
    assert [r["step"] for r in split if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert train_losses(split) == train_losses(straight)  # bit for bit
    marker = json.loads((Path(run_dir) / "checkpoints" / "deepspeed" / "last.json").read_text())
    assert marker == {"tag": "step6", "step": 6, "world_size": 2, "zero_stage": 2}
    assert [p.name for p in (Path(run_dir) / "checkpoints" / "deepspeed").glob("step*")] == ["step6"]

    # ttt eval consolidates the ZeRO-2 checkpoint into a plain state dict, in one process
    assert main(["eval", run_dir, "--split", "val"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 6
    assert result["loss"] == pytest.approx([r for r in straight if r["split"] == "val"][-1]["loss"], rel=1e-6)


@needs_deepspeed
def test_resume_with_another_world_size_is_refused_before_launch(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    recipe = load_recipe(TINY, RESUME)
    (run_dir / "checkpoints" / "deepspeed").mkdir(parents=True)
    (run_dir / "checkpoints" / "deepspeed" / "last.json").write_text(
        json.dumps({"tag": "step3", "step": 3, "world_size": 2, "zero_stage": 2}))
    forbid_launch(monkeypatch)
    from ttt_core.distributed.launch import launch

    with pytest.raises(TTTError) as info:
        launch(recipe, run_dir, TINY, RESUME, 1, True)
    assert info.value.lines == [
        f"{run_dir}: the checkpoint at step 3 was saved by 2 ranks with ZeRO stage 2, whose optimizer state "
        "DeepSpeed cannot re-partition; resume it with --nproc 2"
    ]


# --- faults ---------------------------------------------------------------------------------------


def rank_pid(launcher_pid: int, rank: int) -> int | None:
    import psutil

    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                return child.pid
        except psutil.Error:
            continue
    return None


FAULT = """
import os
if os.environ.get("RANK") == "1":  # only in rank 1 of the run under test
    import ttt_core.distributed.engine as engine

    real = engine.DeepSpeedStep.train_step

    def train_step(self, step):
        if step == 5 and os.environ["FAULT"] == "raise":
            raise RuntimeError("injected fault")
        if step == 5 and os.environ["FAULT"] == "hang":
            import time

            time.sleep(3600)
        return real(self, step)

    engine.DeepSpeedStep.train_step = train_step
"""


def run_until_checkpoint(run_dir: Path, step: int, extra_env=None, args=()) -> subprocess.Popen:
    """`ttt run --nproc 2` of a long run, returned once its checkpoint of `step` is complete."""
    sets = [a for o in [*COMMON, "train.steps=100000", "train.checkpoint_every=2"] for a in ("--set", o)]
    proc = subprocess.Popen([sys.executable, "-m", "ttt_core.cli", "run", TINY, "--nproc", "2", "--out", str(run_dir),
                             *sets, *args, "--quiet"], env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    marker = run_dir / "checkpoints" / "deepspeed" / "last.json"
    deadline = time.monotonic() + 300
    while not (marker.exists() and json.loads(marker.read_text())["step"] >= step) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    return proc


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[float, list[str]]:
    """Seconds until the launcher exits (at most `timeout`), and its last stderr lines."""
    started = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # stops the launcher and its ranks
            proc.wait(30)
    return time.monotonic() - started, stderr.strip().splitlines()


@needs_deepspeed
def test_killed_rank_stops_the_others_and_the_checkpoint_stays_loadable(tmp_path):
    from ttt_core.train.checkpoint import load_model_state

    run_dir = tmp_path / "run"
    proc = run_until_checkpoint(run_dir, 4)
    pid = rank_pid(proc.pid, 1) if proc.poll() is None else None
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    elapsed, lines = finish(proc)
    assert pid is not None, lines[-20:]
    assert proc.returncode == 2 and elapsed < 60
    assert f"{run_dir}: rank 1 was killed by SIGKILL; the other ranks were stopped" in lines, lines[-5:]
    assert lines[-1].startswith(f"{run_dir}: last complete checkpoint: step "), lines[-5:]
    _, state = load_model_state(run_dir)  # the last marked tag, consolidated
    assert state["step"] >= 4 and "inner.log_lr" in state["model"]


def inject(tmp_path: Path, fault: str) -> dict[str, str]:
    """Environment whose rank 1 raises or hangs at step 5 (a sitecustomize module: no hook in ttt)."""
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(FAULT)
    return {"FAULT": fault, "PYTHONPATH": f"{tmp_path / 'inject'}{os.pathsep}{env()['PYTHONPATH']}"}


@needs_deepspeed
@pytest.mark.parametrize("fault", ["raise", "hang"])
def test_rank_that_raises_or_hangs_stops_the_others(tmp_path, fault):
    run_dir = tmp_path / "run"
    timeout = ["--set", "distributed.timeout_s=8"] if fault == "hang" else []
    proc = run_until_checkpoint(run_dir, 4, inject(tmp_path, fault), timeout)
    elapsed, lines = finish(proc)
    assert proc.returncode == 2 and elapsed < 60, lines[-20:]
    if fault == "raise":
        assert lines[-2] == f"{run_dir}: rank 1 exited with code 1: RuntimeError: injected fault; the other ranks were stopped"
    else:  # rank 0 gives up waiting for rank 1 after distributed.timeout_s
        assert lines[-2].startswith(f"{run_dir}: rank 0 exited with code 1: RuntimeError: "), lines[-20:]
        assert "Timed out" in lines[-2] and lines[-2].endswith("; the other ranks were stopped"), lines[-2]
    assert lines[-1] == (
        f"{run_dir}: last complete checkpoint: step 4 ({run_dir / 'checkpoints' / 'deepspeed' / 'step4'}); "
        f"resume with: ttt run {run_dir} --nproc 2"
    )


# --- malformed settings: one line each, before any process group ----------------------------------


def one_line(*overrides, path=TINY) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["distributed.backend='deepspeed'", *overrides])
    assert len(info.value.lines) == 1, info.value.lines
    return info.value.lines[0]


def test_validate_refuses_malformed_deepspeed_tables():
    prefix = f"{TINY}: [deepspeed] "
    assert one_line("deepspeed.gradient_cliping=1.0") == (
        prefix + "unknown option 'gradient_cliping' (did you mean 'gradient_clipping'?) "
        "(DeepSpeed 0.19.8 would ignore it silently)"
    )
    assert one_line("deepspeed.zero_optimization.stage=3") == prefix + deepspeed_config.STAGE3
    assert one_line("deepspeed.optimizer.type='Adam'").startswith(prefix + "'optimizer' is not allowed: ")
    assert one_line("deepspeed.scheduler.type='WarmupLR'").startswith(prefix + "'scheduler' is not allowed: ")
    assert one_line("deepspeed.fp16.enabled=true").startswith(prefix + "'fp16' is not allowed: ")
    # every contradiction with the recipe in one line
    assert one_line("deepspeed.train_batch_size=16", "deepspeed.gradient_clipping=0.5",
                    "deepspeed.train_micro_batch_size_per_gpu=3") == (
        prefix + "contradicts the recipe: train_batch_size = 16 but [train] batch_size = 8; gradient_clipping = 0.5 "
        "but [optimizer] clip_norm = 1.0; train_micro_batch_size_per_gpu = 3 does not divide [train] batch_size = 8 "
        '(write "auto" or leave them out)'
    )
    assert one_line("deepspeed.zero_optimization.reduce_bucket_size='auto'") == (
        prefix + 'zero_optimization.reduce_bucket_size = "auto": only train_batch_size, train_micro_batch_size_per_gpu, '
        'gradient_accumulation_steps, gradient_clipping may be "auto" (the recipe owns them)'
    )


def test_deepspeed_config_file_is_relative_to_the_recipe(write):
    write("configs/ds.json", '{"zero_optimization": {"stage": 1}, "gradient_clipping": "auto"}')
    recipe_path = write("r.toml", f'extends = ["{TINY}"]\n[distributed]\nbackend = "deepspeed"\ndeepspeed_config = "configs/ds.json"\n')
    recipe = load_recipe(recipe_path)
    assert recipe.deepspeed == {"zero_optimization": {"stage": 1}, "gradient_clipping": "auto"}
    resolved = recipe.resolved()  # stored inline: a run directory does not depend on the file
    assert resolved["distributed"]["deepspeed_config"] is None  # None: left out of the TOML
    assert resolved["deepspeed"]["zero_optimization"] == {"stage": 1}
    write("configs/ds.json", '{"zero_optimization": {"stage": 3}}')
    line = one_line(path=recipe_path)
    assert line.startswith(f"{recipe_path}: [deepspeed] (") and "ds.json) zero_optimization.stage = 3 is not supported" in line
    both = write("both.toml", f'extends = ["{recipe_path}"]\n[deepspeed]\nsteps_per_print = 10\n')
    assert "not both" in one_line(path=both)
    missing = write("missing.toml", f'extends = ["{TINY}"]\n[distributed]\ndeepspeed_config = "nope.json"\n')
    assert one_line(path=missing).endswith("nope.json': file not found")


def test_auto_values_are_filled_from_the_recipe():
    assert deepspeed_config.resolve({}, 8, 1.0, 2) == {
        "train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0, "zero_optimization": {"stage": 0}, "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
    }
    config = deepspeed_config.resolve({"gradient_accumulation_steps": 2, "train_batch_size": "auto"}, 8, None, 2)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"], config["gradient_clipping"]) == (2, 2, 0.0)
    with pytest.raises(ValueError, match=r"^\[train\] batch_size = 8 does not split over 3 ranks x gradient_accumulation_steps = 1; use a batch size divisible by 3$"):
        deepspeed_config.resolve({}, 8, 1.0, 3)


def forbid_launch(monkeypatch):
    import torch.distributed.run

    def launched(*args, **kwargs):
        raise AssertionError("a process group was started")

    monkeypatch.setattr(torch.distributed.run, "run", launched)


@needs_deepspeed
def test_launch_checks_need_no_process_group(tmp_path, monkeypatch, capsys):
    forbid_launch(monkeypatch)
    out = ["--out", str(tmp_path / "run")]
    cases = {
        # DeepSpeed's own parser, for the blocks we pass through
        ("--set", "deepspeed.zero_optimization.overlap_comms=true"):
            f"{TINY}: [deepspeed] zero_optimization.overlap_comms: Extra inputs are not permitted",
        ("--nproc", "3"):
            f"{TINY}: [deepspeed] [train] batch_size = 8 does not split over 3 ranks x gradient_accumulation_steps = 1; "
            "use a batch size divisible by 3",
        ("--set", "deepspeed.train_micro_batch_size_per_gpu=2", "--set", "deepspeed.gradient_accumulation_steps=1"):
            f"{TINY}: [deepspeed] contradicts the recipe: train_micro_batch_size_per_gpu x gradient_accumulation_steps x "
            'ranks = 2 x 1 x 2 but [train] batch_size = 8 (write "auto" or leave them out)',
    }
    for args, message in cases.items():
        nproc = [] if "--nproc" in args else ["--nproc", "2"]
        assert main(["run", TINY, *out, "--set", "distributed.backend='deepspeed'", *nproc, *args]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [message]
    assert main(["run", TINY, *out, "--nproc", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        f'{TINY}: --nproc 2 needs [distributed] backend = "deepspeed" (e.g. --set distributed.backend=deepspeed)'
    )


@needs_deepspeed
def test_the_key_allow_list_belongs_to_the_installed_deepspeed():
    """The allow-list was recorded for one DeepSpeed version: moving the pin means recording it again
    (bench/deepspeed_probe/config_keys.py)."""
    import deepspeed
    from deepspeed.runtime.config import _REMOVED_TOP_LEVEL_CONFIG_KEYS

    assert deepspeed.__version__ == deepspeed_config.DEEPSPEED_VERSION_CHECKED
    assert not set(_REMOVED_TOP_LEVEL_CONFIG_KEYS) & deepspeed_config.KNOWN_KEYS


def test_zero_dim_parameters_are_named():
    import torch

    from ttt_core.distributed.engine import check_parameters

    module = torch.nn.Module()
    module.scale = torch.nn.Parameter(torch.tensor(1.0))
    with pytest.raises(TTTError, match=r"^parameters scale are 0-dimensional"):
        check_parameters(module)


# --- the launcher's ranks die with it ---------------------------------------------------------------


def running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@needs_deepspeed
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_ranks_die_with_the_launcher(tmp_path, sig):
    """SIGTERM/SIGINT: the launcher stops its ranks and says so in one line (no traceback); SIGKILL
    gives it no chance, and the ranks die through their parent-death signal."""
    run_dir = tmp_path / "run"
    proc = run_until_checkpoint(run_dir, 2)
    ranks = [rank_pid(proc.pid, rank) if proc.poll() is None else None for rank in (0, 1)]
    assert None not in ranks, proc.communicate(timeout=60)[1][-3000:]
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = [pid for pid in ranks if running(pid)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, f"ranks {orphans} outlived the launcher ({sig.name})"
    if sig != signal.SIGKILL:
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
        assert lines[-2] == f"{run_dir}: stopped by {sig.name}; the ranks were stopped", lines[-5:]
        assert lines[-1].startswith(f"{run_dir}: last complete checkpoint: step "), lines[-5:]


# --- monitors write inside the run directory --------------------------------------------------------


def test_monitors_that_would_write_elsewhere_are_refused():
    prefix = f"{TINY}: [deepspeed] "
    assert one_line("deepspeed.wandb.enabled=true") == (
        prefix + "'wandb' is not supported: it writes outside the run directory (./wandb) and to a remote service; "
        "use csv_monitor or tensorboard (kept in the run directory)"
    )
    assert one_line("deepspeed.csv_monitor.enabled=true", "deepspeed.csv_monitor.output_path='/tmp/logs'") == (
        prefix + "csv_monitor.output_path = '/tmp/logs': give a path inside the run directory (relative, without '..')"
    )
    assert one_line("deepspeed.tensorboard.output_path='../x'").endswith("(relative, without '..')")
    load_recipe(TINY, ["distributed.backend='deepspeed'", "deepspeed.wandb.enabled=false"])  # disabled: fine


def test_monitor_outputs_are_placed_in_the_run_directory():
    table = {"csv_monitor": {"enabled": True}, "tensorboard": {"enabled": True, "output_path": "tb"},
             "flops_profiler": {"enabled": True, "output_file": "flops.txt"}}
    config = deepspeed_config.place_outputs(deepspeed_config.resolve(table, 8, 1.0, 2), "/runs/x")
    assert config["csv_monitor"] == {"enabled": True, "output_path": "/runs/x/monitor"}
    assert config["tensorboard"] == {"enabled": True, "output_path": "/runs/x/tb"}
    assert config["flops_profiler"] == {"enabled": True, "output_file": "/runs/x/flops.txt"}
    assert deepspeed_config.place_outputs({"csv_monitor": {"enabled": False}}, "/r") == {"csv_monitor": {"enabled": False}}


@needs_deepspeed
def test_csv_monitor_writes_inside_the_run_directory(tmp_path):
    cwd, run_dir = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    sets = [a for o in [*COMMON, "train.steps=2", "deepspeed.csv_monitor.enabled=true",
                        "deepspeed.csv_monitor.job_name='job'", "deepspeed.steps_per_print=1"] for a in ("--set", o)]
    done = subprocess.run([sys.executable, "-m", "ttt_core.cli", "run", TINY, "--nproc", "1", "--out", str(run_dir),
                           *sets, "--quiet"], env=env(), cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, errors(done.stderr)
    assert list(cwd.iterdir()) == []
    assert list((run_dir / "monitor" / "job").glob("*.csv")), list(run_dir.rglob("*"))
