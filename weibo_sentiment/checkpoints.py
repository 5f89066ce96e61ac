"""Training checkpoints that lose nothing: a checkpoint directory owned by one run (a marker file says whose),
a step checkpoint every `--save-steps`, only complete checkpoints resumed (the Trainer writes a checkpoint in place,
file by file, so a killed process leaves a partial one), and `--resume` only for the same data and settings.

Nothing here deletes what a run did not write: a directory holding anything else is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from .durable import write_json_record
from .errors import UserError
from .output import holds

logger = logging.getLogger(__name__)

MARKER_FILE = "weibo_sentiment_checkpoints.json"  # in the checkpoint dir: whose checkpoints these are
COMPLETE_FILE = "weibo_sentiment_complete.json"  # in a checkpoint-N: written last, lists every file and its size
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


@dataclass(frozen=True)
class ResumeRules:
    """What `--resume` checks, given by each recipe (its own settings): `names`, the identity keys that must match
    with the name a refusal gives each, in the order a refusal names them; `defaults`, what a marker written before
    a key joined the identity means by its absence; `extensible`, what a finished run kept with --keep-checkpoints
    may change to train longer; `unset`, how a refusal shows a key whose value is None, where not as "none"."""

    names: dict[str, str]
    defaults: dict[str, object]
    extensible: frozenset[str]
    unset: dict[str, str] = field(default_factory=dict)


def _checkpoint_folders(root: Path) -> list[Path]:
    """`checkpoint-N` folders in `root`, by N."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def checkpoint_complete(folder: Path) -> bool:
    """True when `folder` was written to the end: its completion record exists (the Trainer writes a checkpoint in
    place, file by file, so a process killed mid-save leaves a partial folder) and every file it lists is there with
    the recorded size."""
    try:
        files = json.loads((folder / COMPLETE_FILE).read_text(encoding="utf-8"))["files"]
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def last_complete_checkpoint(root: Path) -> Path | None:
    complete = [p for p in _checkpoint_folders(root) if checkpoint_complete(p)]
    return complete[-1] if complete else None


def _remove_checkpoint(folder: Path) -> None:
    (folder / COMPLETE_FILE).unlink(missing_ok=True)  # first: a half-removed folder must not look complete
    shutil.rmtree(folder, ignore_errors=True)


def inspect_checkpoint_dir(checkpoints: Path, *, output: str | Path, resume: bool, restart: bool) -> dict | None:
    """Refuse a checkpoint dir this run (writing `output`) may not use, before any model work; return its marker, if
    any."""
    if resume and restart:
        raise UserError("--resume continues the checkpoints' run and --restart discards them: pass one of them")
    if checkpoints.exists() and not checkpoints.is_dir():
        raise UserError(f"--checkpoint-dir {checkpoints} is a file, not a directory")
    ours = {MARKER_FILE, MARKER_FILE + ".tmp"}
    entries = list(checkpoints.iterdir()) if checkpoints.is_dir() else []
    foreign = sorted(p.name for p in entries
                     if p.name not in ours and not (p.is_dir() and _CHECKPOINT.fullmatch(p.name)))
    marker_path = checkpoints / MARKER_FILE
    if not foreign and _checkpoint_folders(checkpoints) and not marker_path.is_file():
        foreign = [p.name for p in _checkpoint_folders(checkpoints)]  # checkpoints, but not of a weibo-sentiment run
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"--checkpoint-dir {checkpoints} holds files that are not this run's checkpoints ({shown}); "
                        f"checkpoints need a directory of their own: choose a new or empty one")
    if holds(checkpoints, Path(output).parent):
        raise UserError(f"--output {output} is inside --checkpoint-dir {checkpoints}, which must hold "
                        f"checkpoints only: choose another --checkpoint-dir")
    if not entries:
        if resume:
            raise UserError(f"--resume: no checkpoint in {checkpoints} to resume from")
        return None
    marker = None
    if marker_path.is_file():
        try:
            marker = json.loads(marker_path.read_text(encoding="utf-8"))
            marker["identity"]  # noqa: B018 (a marker without an identity is not ours)
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{marker_path}: not a valid weibo-sentiment checkpoint record; "
                            f"remove the directory {checkpoints} or choose another --checkpoint-dir") from None
    folders = _checkpoint_folders(checkpoints)
    last = last_complete_checkpoint(checkpoints)
    if resume and last is None:
        raise UserError(f"--resume: no checkpoint in {checkpoints} to resume from")
    if folders and not resume and not restart:
        earlier = "a finished run (kept with --keep-checkpoints)" if marker.get("completed") else "an interrupted run"
        if last is None:
            raise UserError(f"--checkpoint-dir {checkpoints} holds only incomplete checkpoints of {earlier}; "
                            f"pass --restart to discard them and start afresh")
        raise UserError(f"--checkpoint-dir {checkpoints} holds checkpoints of {earlier} (up to {last.name}); "
                        f"pass --resume to continue it or --restart to discard them and start afresh")
    return marker


def _shown(key: str, value, rules: ResumeRules) -> str:
    if value is None:
        return rules.unset.get(key, "none")
    if key.endswith("sha256"):
        return value[:12]
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def claim_checkpoint_dir(checkpoints: Path, marker: dict | None, identity: dict, rules: ResumeRules, *,
                         resume: bool, restart: bool) -> Path | None:
    """Check that `--resume` continues the same run (by `rules`), discard what `--restart` asks to, and record this
    run in the marker. Returns the checkpoint to resume from."""
    resume_from = None
    if resume:
        old = {**rules.defaults, **marker["identity"]}
        identity = {**rules.defaults, **identity}  # an identity may leave out what is at its default
        differ = [k for k in rules.names if old.get(k) != identity.get(k)]
        if marker.get("completed") and set(differ) <= rules.extensible:
            differ = []  # training a finished run further: the schedule is the new length's
        if differ:
            what = "; ".join(f"{rules.names[k]} was {_shown(k, old.get(k), rules)}, now "
                             f"{_shown(k, identity.get(k), rules)}" for k in differ)
            raise UserError(f"--resume: the checkpoints in {checkpoints} are of a different run ({what}); "
                            f"resume with the same data and settings, or pass --restart to discard them")
        resume_from = last_complete_checkpoint(checkpoints)
        for folder in _checkpoint_folders(checkpoints):
            if int(folder.name.split("-")[1]) > int(resume_from.name.split("-")[1]):
                logger.warning("%s is incomplete (the run was stopped while writing it); removing it", folder)
                _remove_checkpoint(folder)
        logger.info("resuming from %s", resume_from)
    elif marker is not None:
        if restart:
            logger.warning("--restart: discarding the checkpoints in %s", checkpoints)
        for folder in _checkpoint_folders(checkpoints):
            _remove_checkpoint(folder)
    created = marker.get("created_dir", False) if marker is not None else not checkpoints.exists()
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_json_record(checkpoints / MARKER_FILE, {"tool": "weibo-sentiment", "created_dir": created,
                                                  "completed": False, "identity": identity})
    return resume_from


def release_checkpoint_dir(checkpoints: Path, keep: bool) -> None:
    """After a successful run: keep the checkpoints (marked finished) or remove exactly what this run wrote."""
    marker_path = checkpoints / MARKER_FILE
    marker = json.loads(marker_path.read_text(encoding="utf-8"))
    if keep:
        write_json_record(marker_path, {**marker, "completed": True})
        return
    for folder in _checkpoint_folders(checkpoints):
        _remove_checkpoint(folder)
    marker_path.unlink()
    marker_path.with_name(MARKER_FILE + ".tmp").unlink(missing_ok=True)
    if marker.get("created_dir") and not any(checkpoints.iterdir()):
        checkpoints.rmdir()


class CheckpointKeeper(TrainerCallback):
    """Step checkpoints every `save_steps`, and one after each epoch's evaluation; a completion record in each; only
    the latest checkpoint and the best epoch's are kept.

    The Trainer would save at an epoch's last step before evaluating it: a run resumed from that checkpoint would
    start the next epoch and never evaluate this one. So that save is moved after the evaluation.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and (float(state.epoch).is_integer() or state.global_step >= state.max_steps):
            control.should_save = False  # the end of an epoch (or of training): saved after its evaluation
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        # Several processes (torchrun): each writes its own rng_state_N.pth into the checkpoint and rank 0 the
        # rest; once all have, rank 0 alone completes the checkpoint and removes old ones.
        if args.world_size > 1:
            import torch.distributed

            torch.distributed.barrier()
        if not state.is_world_process_zero:
            return control
        root = Path(args.output_dir)
        folder = root / f"checkpoint-{state.global_step}"
        files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE_FILE):
            with path.open("rb") as f:
                os.fsync(f.fileno())
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
        write_json_record(folder / COMPLETE_FILE, {"global_step": state.global_step, "files": files})
        evals = [e for e in state.log_history if "eval_macro_f1" in e]
        keep = {folder.name}
        if evals:
            keep.add(f"checkpoint-{max(evals, key=lambda e: e['eval_macro_f1'])['step']}")
        for old in _checkpoint_folders(root):
            if old.name not in keep and int(old.name.split("-")[1]) < state.global_step:
                _remove_checkpoint(old)
        return control


def load_checkpoint_weights(model, folder: Path) -> None:
    """Put the adapter weights of the checkpoint `folder` into `model`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    if result.unexpected_keys:
        raise RuntimeError(f"{folder}: unexpected adapter weights {result.unexpected_keys[:3]}")
