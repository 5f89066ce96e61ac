"""Where this process stands in a data-parallel run started by `torchrun` or `accelerate launch`, on accelerate's
`PartialState`; one process alone is rank 0 of 1 and nothing here changes what it does."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from .errors import UserError


class Ranks:
    """The processes of this run (torchrun's or accelerate launch's RANK and WORLD_SIZE).

    With several processes the process group is set up at once (gloo on the CPU, NCCL on CUDA: the backends
    `TrainingArguments` would pick, which it then reuses), so that rank 0 alone can claim the checkpoint directory
    and write the adapter while the others wait for its outcome (`once`)."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            # The CPU needs use_cpu + gloo: without them each rank would train alone, on its own (identical) data.
            self.state = PartialState(cpu=not self.cuda, backend="nccl" if self.cuda else "gloo",
                                      **({"timeout": timedelta(seconds=1800)} if self.cuda else {}))
        else:  # a backend named here would make PartialState look for a process group that one process has not
            self.state = PartialState()
        self.rank = self.state.process_index
        self.world = self.state.num_processes
        self.main = self.state.is_main_process
        if not self.main:  # logs once: the other ranks say only what goes wrong
            logging.getLogger("weibo_sentiment").setLevel(logging.WARNING)

    def training_arguments(self) -> dict:
        """The Trainer's distributed settings (none for one process)."""
        if self.world == 1:
            return {}
        # PEFT models would make the Trainer search for unused parameters after every backward pass; all are used.
        # Logs and checkpoints come from rank 0 only, not from the first process of every node.
        extra = {"ddp_find_unused_parameters": False, "ddp_backend": "nccl" if self.cuda else "gloo",
                 "log_on_each_node": False, "save_on_each_node": False}
        return extra if self.cuda else {**extra, "use_cpu": True}

    def once(self, work: Callable[[], object]):
        """`work()` on rank 0 alone; every rank returns its result or raises its UserError (so that a refusal stops
        all processes instead of leaving the others waiting). accelerate's `on_main_process` would run it there too,
        but tell the other ranks neither its result nor its failure."""
        if self.world == 1:
            return work()
        outcome: list = [None]
        failure = None
        if self.main:
            try:
                outcome[0] = ("ok", work())
            except UserError as e:
                outcome[0] = ("refused", str(e))
            except BaseException as e:  # noqa: BLE001 (passed on, then raised here)
                outcome[0], failure = ("failed", f"rank 0 failed: {type(e).__name__}: {e}"), e
        broadcast_object_list(outcome, from_process=0)
        if failure is not None:
            raise failure
        kind, value = outcome[0]
        if kind != "ok":
            error = UserError(value)
            error.echo = not self.main  # rank 0 says it; the CLI keeps the other ranks' copies quiet
            raise error
        return value

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    def close(self) -> None:
        """The end of a data-parallel run: once every rank is here, tear the process group down. Left to the
        interpreter's exit, gloo's threads could still be talking to a rank that is gone, and abort the process."""
        if self.world > 1 and torch.distributed.is_initialized():
            self.state.wait_for_everyone()
            self.state.destroy_process_group()
