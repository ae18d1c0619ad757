"""The run skeleton both trainers share: a folder the run owns, resume, trackers, progress, checkpoints.

``Run.open(cfg, command)`` does, before any model is loaded:

1. checks the output folder (not a file, not under a file, writable) and takes its lock, so that a
   second process on the same folder is refused;
2. settles ownership: a folder holds one run (``run.json``: its id and command, ``config.yaml``: the
   config it was started with). A rerun with a different config, or a folder holding another run's
   checkpoints, is refused unless ``overwrite_output_dir`` (start over) or ``resume_from_checkpoint``
   (continue under the new config, recorded as ``config-resume-<step>.yaml``; ``config.yaml`` is
   only written by a run that starts from scratch);
3. picks the resume point: the newest intact checkpoint (manifest verified, trainer state readable),
   after mending a crash in the middle of a checkpoint swap; a damaged newer one is reported and
   skipped; ``log.jsonl`` is cut back to what it held when that checkpoint was written;
4. starts accelerate with its trackers: JSONL (our own tracker, always) and TensorBoard / W&B.

Then ``run.save(...)`` checks the weights are finite and writes a checkpoint with the progress, RNG
and optimizer state of every process; ``run.restore(...)`` puts them back, bit for bit.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.tracking import GeneralTracker

from latentrl import allocator
from latentrl.config import ConfigError, config_to_dict, load_config, save_config
from latentrl.errors import NonFiniteError
from latentrl.fsutil import atomic_write_text, check_output_dir
from latentrl.models.checkpoint import (
    CheckpointStateError, load_tensor_state, load_trainer_state, recover_swap, save_checkpoint, verify_checkpoint,
)  # fmt: skip

RUN_FILE, LOCK_FILE, LOG_FILE = "run.json", ".lock", "log.jsonl"
# keys that change how a run reports, never what it computes: a rerun may change them freely
REPORTING_KEYS = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint", "disable_tqdm", "report_to",
                  "logging_steps", "save_steps", "save_total_limit",
                  "compact_at", "cache_implementation", "torch_compile",  # the engine's: the same tokens
                  "torch_compile_update")  # fmt: skip  (the same update, within float rounding)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class RunError(ValueError):
    """An output folder this run cannot use as asked (another run's, locked, not writable, damaged)."""


def warn(message: str) -> None:
    print(f"latentrl: warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- trackers


class JSONLTracker(GeneralTracker):
    """accelerate tracker writing one JSON object per ``log`` call to ``<dir>/log.jsonl`` (appended)."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike):
        super().__init__()
        self.path = Path(logging_dir) / LOG_FILE

    @property
    def tracker(self) -> Path:
        return self.path

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``log.jsonl`` (empty when there is none)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def _truncate_log(path: Path, lines: int) -> None:
    """Keep the first ``lines`` records of a log: a resumed run logs its steps again from there."""
    if _count_lines(path) > lines:
        kept = [line for line in path.read_text().splitlines() if line.strip()][:lines]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------------------------------- the folder


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders of a run, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
             if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]  # fmt: skip
    return [p for _, p in sorted(found)]


_OURS = re.compile(r"^(checkpoint-\d+|stage-\d+|final|best)$")  # the folders a run writes (and may mend)
_CONFIGS = re.compile(r"^config(-resume-\d+)?\.yaml$")


def _artifacts(out: Path) -> list[Path]:
    """What a run writes in its folder (and ``overwrite_output_dir`` deletes): nothing else is touched."""
    names = (LOG_FILE, "tensorboard", RUN_FILE)
    return ([p for p in sorted(out.iterdir()) if _OURS.match(p.name) or _CONFIGS.match(p.name)] if out.is_dir() else []) + [
        out / n for n in names if (out / n).exists()]  # fmt: skip


def _wipe(out: Path) -> None:
    for path in _artifacts(out):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _changed_keys(recorded: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    return {k: (recorded.get(k), v) for k, v in current.items() if k not in REPORTING_KEYS and recorded.get(k) != v}


@dataclass
class Resume:
    """Where a run starts: from scratch, from a checkpoint, or already finished."""

    checkpoint: Path | None = None
    state: dict = field(default_factory=dict)  # trainer_state.json of the checkpoint
    finished: bool = False
    changed: dict = field(default_factory=dict)  # config keys changed by an explicit resume


def _intact_candidates(out: Path, run_id: str) -> list[tuple[Path, dict]]:
    """The run's intact checkpoints (final/ last), newest last; damaged ones are reported and skipped,
    another run's are refused."""
    found = []
    for path in checkpoints(out) + ([out / "final"] if (out / "final").is_dir() else []):
        problem = verify_checkpoint(path)
        state = None
        if problem is None:
            try:
                state = load_trainer_state(path)
            except CheckpointStateError as err:
                problem = str(err)
        if problem is None and (state is None or "global_step" not in state):
            problem = "no trainer state (not resumable)"
        if problem is not None:
            warn(f"{path} is damaged: {problem}; it is skipped")
            continue
        if state.get("run_id") != run_id:
            raise RunError(f"{path} belongs to another run (run id {state.get('run_id')!r}, this folder's is "
                           f"{run_id!r}); move it away or set overwrite_output_dir=true")  # fmt: skip
        found.append((path, state))
    return sorted(found, key=lambda ps: (ps[1]["global_step"], ps[0].name == "final"))


def settle_folder(cfg, command: str, fixed_keys: tuple[str, ...]) -> Resume:
    """Steps 1-3 of the module docstring, on the main process; returns where the run starts."""
    out = Path(cfg.output_dir)
    for leftover in list(out.glob("*.tmp")) + list(out.glob("*.old")):  # a crash in a checkpoint's swap
        if _OURS.match(leftover.with_suffix("").name):
            recover_swap(leftover.with_suffix(""))
    if cfg.overwrite_output_dir:
        _wipe(out)
    info = _read_run_file(out)
    if info is None:
        foreign = [p.name for p in _artifacts(out)]
        if foreign:
            raise RunError(f"output_dir {out} holds {', '.join(foreign[:4])} but no {RUN_FILE}: they are not this "
                           "run's; choose another output_dir or set overwrite_output_dir=true")  # fmt: skip
        _start_fresh(cfg, out, command)
        return Resume()
    if info.get("command") != command:
        raise RunError(f"output_dir {out} holds a {info.get('command')!r} run, not {command!r}; choose another output_dir")
    recorded = load_config(type(cfg), out / info["configs"][-1])
    changed = _changed_keys(config_to_dict(recorded), config_to_dict(cfg))
    if changed and not cfg.resume_from_checkpoint:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in changed.items()))
        raise RunError(f"output_dir {out} holds a run made with another config ({listed}); rerun with the recorded "
                       "config, choose another output_dir, set resume_from_checkpoint=true to continue under the new "
                       "config, or overwrite_output_dir=true to start over")  # fmt: skip
    fixed = sorted(set(changed) & set(fixed_keys))
    if fixed:
        raise RunError(f"{', '.join(fixed)} cannot change in a resumed run (its checkpoints are of the recorded "
                       f"{fixed[0]}); choose another output_dir or set overwrite_output_dir=true")  # fmt: skip
    return _resume_point(cfg, out, info, changed)


def _read_run_file(out: Path) -> dict | None:
    """``run.json`` of the folder, checked (RunError naming the file when it is damaged), or None."""
    path = out / RUN_FILE
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{path} is unreadable ({err}); restore it, or set overwrite_output_dir=true") from None
    ok = isinstance(info, dict) and isinstance(info.get("run_id"), str) and isinstance(info.get("command"), str)
    if not ok or not isinstance(info.get("configs"), list) or not info["configs"]:
        raise RunError(f"{path} is damaged (needs run_id, command and a non-empty configs list); restore it, or set "
                       "overwrite_output_dir=true")  # fmt: skip
    return info


def _start_fresh(cfg, out: Path, command: str, run_id: str | None = None) -> None:
    """Record the run: ``config.yaml`` (the config it starts with) and ``run.json``; the log starts empty."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / LOG_FILE, out / "tensorboard"):  # only this run's own (no checkpoint was written yet)
        if stale.exists():
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    for old in out.glob("config-resume-*.yaml"):
        old.unlink()
    save_config(cfg, out / "config.yaml")
    info = {"run_id": run_id or uuid.uuid4().hex, "command": command, "configs": ["config.yaml"],
            "allocator": allocator.current()}  # fmt: skip
    atomic_write_text(out / RUN_FILE, json.dumps(info, indent=1) + "\n")


def _resume_point(cfg, out: Path, info: dict, changed: dict) -> Resume:
    candidates = _intact_candidates(out, info["run_id"])
    if isinstance(cfg.resume_from_checkpoint, str):
        wanted = Path(cfg.resume_from_checkpoint)
        candidates = [(p, s) for p, s in candidates if p.resolve() == wanted.resolve()]
        if not candidates:
            raise RunError(f"resume_from_checkpoint={wanted}: not an intact checkpoint of the run in {out}")
    elif not candidates and (checkpoints(out) or (out / "final").exists()):
        raise RunError(f"every checkpoint in {out} is damaged (see the warnings above); the run will not restart "
                       "from step 0 over them: delete them or set overwrite_output_dir=true")  # fmt: skip
    if changed:  # a final/ holding the best epoch's weights is no state to continue from
        candidates = [(p, st) for p, st in candidates if not st.get("holds_best")]
    if not candidates:  # nothing was saved yet: the run starts over, under this config
        _start_fresh(cfg, out, info["command"], info["run_id"])
        return Resume()
    path, state = candidates[-1]
    if isinstance(cfg.resume_from_checkpoint, str):
        _supersede_newer(out, state, path)
    _truncate_log(out / LOG_FILE, state.get("log_lines", 0))
    if changed:
        name = f"config-resume-{state['global_step']}.yaml"
        save_config(cfg, out / name)
        info["configs"].append(name)
        atomic_write_text(out / RUN_FILE, json.dumps(info, indent=1) + "\n")
    return Resume(path, state, finished=path.name == "final" and state.get("finished", False) and not changed,
                  changed=changed)  # fmt: skip


def _supersede_newer(out: Path, state: dict, chosen: Path) -> None:
    """An explicit resume from an older checkpoint: what the run wrote after it (newer checkpoints,
    stage/best/final folders, the log's later records) is another trajectory, and so is a ``final/`` of the same
    step (a later automatic resume would take the run as complete). It moves, untouched, to
    ``superseded-<step>[-n]/``, so that checkpoint rotation and a later automatic resume never pick it."""
    step = state["global_step"]

    def newer(p: Path) -> bool:
        if not (p.is_dir() and _OURS.match(p.name)):
            return False
        try:
            found = (load_trainer_state(p) or {}).get("global_step")
        except CheckpointStateError:
            found = None
        if found is None:  # damaged or stateless: its step is in its name, when it has one
            m = _CHECKPOINT.match(p.name)
            found = int(m.group(1)) if m else -1
        return found > step

    later = [p for p in sorted(out.iterdir()) if newer(p) or (p.name == "final" and p.is_dir() and p != chosen)]
    log = out / LOG_FILE
    cut = [ln for ln in log.read_text().splitlines() if ln.strip()][state.get("log_lines", 0) :] if log.exists() else []
    if not later and not cut:
        return
    dest, n = out / f"superseded-{step}", 1
    while dest.exists():
        dest, n = out / f"superseded-{step}-{n}", n + 1
    dest.mkdir()
    if cut:
        atomic_write_text(dest / LOG_FILE, "".join(ln + "\n" for ln in cut))
    for p in later:
        p.rename(dest / p.name)
    warn(f"resuming from step {step}: what the run wrote after it ({', '.join(p.name for p in later) or 'no folders'}"
         f"{f', {len(cut)} log records' if cut else ''}) moved to {dest}")  # fmt: skip


class _Lock:
    """An exclusive ``flock`` on ``<output_dir>/.lock``, released when the process ends in any way."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.file = (out / LOCK_FILE).open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise RunError(f"output_dir {out} is in use by another latentrl process (pid {holder})") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


# ---------------------------------------------------------------------------------------------- numerics


def check_finite(value: torch.Tensor | float, what: str, step: int) -> None:
    """NonFiniteError naming ``what`` when ``value`` is NaN or infinite."""
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not np.isfinite(v):
        raise NonFiniteError(f"step {step}: {what} is {v} (the learning rate may be too high, or a reward or "
                             "input is extreme); stopped before writing a checkpoint")  # fmt: skip


def check_finite_weights(model: torch.nn.Module, step: int) -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteError(f"step {step}: weights are NaN or infinite ({', '.join(bad[:3])}"
                             f"{', ...' if len(bad) > 3 else ''}); stopped before writing a checkpoint")  # fmt: skip


# ---------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """Python and NumPy generator states as JSON values, torch's (CPU and CUDA) as tensors."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [py[0], list(py[1]), py[2]], "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    return {"plain": plain, "tensors": tensors}


def set_rng_state(plain: dict, tensors: dict) -> None:
    version, keys, gauss = plain["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])


# ---------------------------------------------------------------------------------------------- the run


def make_accelerator(cfg, out: Path):
    """accelerate with our JSONL tracker and the asked-for TensorBoard / W&B trackers."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    on_gpu = torch.cuda.is_available()
    if cfg.mixed_precision == "fp16" and not on_gpu:
        raise ConfigError("mixed_precision=fp16 needs a GPU; on the CPU use bf16 or no")
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, cfg.mixed_precision) and not torch.distributed.is_initialized():
        AcceleratorState._reset_state()  # a second run in this process, with another precision
    trackers = [JSONLTracker("jsonl", out)] + [t for t in cfg.report_to if t != "jsonl"]
    # cpu=True lets accelerate run several CPU processes over gloo
    return Accelerator(cpu=not on_gpu, mixed_precision=cfg.mixed_precision, log_with=trackers, project_dir=str(out))


class Run:
    """A training run in its folder: lock, resume point, trackers, progress bar, checkpoints."""

    def __init__(self, cfg, command: str, fixed_keys: tuple[str, ...] = ()):
        self.cfg, self.out, self.bar, self._lock = cfg, Path(cfg.output_dir), None, None
        check_output_dir(self.out)
        self.accelerator = make_accelerator(cfg, self.out)
        self.main = self.accelerator.is_main_process
        self._lock = _Lock(self.out) if self.main else None
        try:
            self.resume = self._broadcast(lambda: settle_folder(cfg, command, fixed_keys))
            step = self.resume.state.get("global_step", 0)
            tb = {"tensorboard": {"purge_step": step}} if "tensorboard" in cfg.report_to and step else {}
            self.accelerator.init_trackers("tensorboard", init_kwargs=tb)
        except BaseException:
            self.close()
            raise

    def _broadcast(self, settle) -> Resume:
        """Settle the folder on the main process; every process gets the result or the same error."""
        from accelerate.utils import broadcast_object_list

        result: list = [None]
        if self.main:
            try:
                result = [settle()]
            except Exception as err:  # noqa: BLE001 - every process raises the main process's error
                result = [err]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(result, from_process=0)
        if isinstance(result[0], Exception):
            raise result[0]
        return result[0]

    # -- progress and logs

    def progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        show = not self.cfg.disable_tqdm and self.accelerator.is_local_main_process
        initial = self.resume.state.get("global_step", 0)
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=None if show else True, dynamic_ncols=True)
        return self.bar

    def log(self, step: int, metrics: dict) -> None:
        self.accelerator.log(metrics, step=step)

    # -- checkpoints

    def save(self, name: str, model, tokenizer, thinking, progress: dict, optimizer=None, scheduler=None) -> Path:
        """Write checkpoint ``name`` (``checkpoint-<step>``, ``best``, ``stage-<s>``, ``final``) with the
        progress, every process's RNG state and the optimizer state; rotate old ``checkpoint-*``."""
        from accelerate.utils import gather_object

        step = progress["global_step"]
        check_finite_weights(model, step)
        rng = gather_object([rng_state()])  # one per process, in process order
        path = self.out / name
        self.accelerator.wait_for_everyone()
        if self.main:
            log_lines = _count_lines(self.out / LOG_FILE)
            trainer_state = {**progress, "run_id": self._run_id(), "log_lines": log_lines, "rng": [r["plain"] for r in rng]}
            tensors = {"rng": [r["tensors"] for r in rng]}
            if optimizer is not None:
                tensors |= {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            save_checkpoint(path, model, tokenizer, thinking, trainer_state, tensors)
            for old in checkpoints(self.out)[: max(0, len(checkpoints(self.out)) - self.cfg.save_total_limit)]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return path

    def restore(self, optimizer, scheduler) -> None:
        """Optimizer, scheduler and this process's RNG from the resume checkpoint. A learning rate
        changed by an explicit resume takes effect (the recorded one would otherwise win)."""
        tensors = load_tensor_state(self.resume.checkpoint)
        optimizer.load_state_dict(tensors["optimizer"])
        scheduler.load_state_dict(tensors["scheduler"])
        rank = min(self.accelerator.process_index, len(tensors["rng"]) - 1)
        set_rng_state(self.resume.state["rng"][rank], tensors["rng"][rank])
        if "learning_rate" in self.resume.changed:
            lr = self.cfg.learning_rate
            scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
            for group in optimizer.param_groups:
                group["initial_lr"] = lr
                group["lr"] = lr * scheduler.lr_lambdas[0](scheduler.last_epoch) if hasattr(scheduler, "lr_lambdas") else lr

    def _run_id(self) -> str:
        return json.loads((self.out / RUN_FILE).read_text())["run_id"]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if getattr(self, "accelerator", None) is not None:
            self.accelerator.end_training()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
