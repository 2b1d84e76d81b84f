"""Fully sharded data parallel with FSDP2 (``torch.distributed.fsdp.fully_shard``), driven by Lightning.

``trainer=fsdp`` builds :class:`FSDP2Strategy`, a Lightning ``ModelParallelStrategy`` with a data-parallel
mesh only: every rank holds a shard (a ``DTensor``) of each parameter, its gradient and its optimizer
state, and all-gathers a block's weights just before the block runs. Sharding is one ``fully_shard`` unit
per transformer block (``tunelab.tuning.parts.find_blocks``), then one for the rest of the model (the
root: embeddings, head). It runs on GPUs (NCCL) and on CPU processes (gloo), so it is tested on any machine.

Checkpoints: ``last`` and requeue (``hpc_ckpt_*``) checkpoints are sharded ``torch.distributed.checkpoint``
folders, written by every rank into a temporary folder that replaces the old one only once it is whole;
they resume at the same world size or another (DCP reshards). Other checkpoints (``best``) are one full
file gathered to rank 0's CPU. A distillation teacher is not sharded: each rank holds a frozen replica.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_warn
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.constants import default_pg_timeout

from tunelab.errors import ConfigError
from tunelab.tuning.parts import find_blocks

log = logging.getLogger(__name__)

#: Checkpoint names (stems) saved as sharded folders: the ones a run resumes from.
SHARDED_CHECKPOINTS = ("last", "hpc_ckpt_")
MIXED_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all ranks, one unit per transformer block.

    Args:
        reshard_after_forward: free each block's gathered weights after its forward pass and gather them
            again for the backward (ZeRO-3, least memory); ``False`` keeps them until the backward
            (ZeRO-2-like: less communication, more memory).
        cpu_offload: keep parameter shards, gradients and optimizer states in CPU memory (GPU runs).
        mixed_precision: ``bf16`` or ``fp16``: blocks compute and all-gather in that dtype and reduce
            gradients in fp32, over fp32 master shards; ``null``: the trainer's ``precision`` alone.
        activation_checkpointing: recompute each block's activations in the backward pass.
        hybrid_shard: shard within a node and replicate across nodes (HSDP): all-gathers stay on the
            node's fast links, gradients are all-reduced across nodes.
        blocks: the blocks' ``ModuleList`` path(s), comma-separated, where auto-detection fails
            (as ``tuning.blocks``); ``null``: found in the model.
    """

    def __init__(self, reshard_after_forward: bool = True, cpu_offload: bool = False, mixed_precision: str | None = None,
                 activation_checkpointing: bool = False, hybrid_shard: bool = False, blocks: str | None = None,
                 process_group_backend: str | None = None, timeout: timedelta | None = default_pg_timeout) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=True,
                         process_group_backend=process_group_backend, timeout=timeout)
        if mixed_precision is not None and mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"trainer.strategy.mixed_precision={mixed_precision}: use one of "
                              f"{', '.join(MIXED_PRECISION)} or null")
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = cpu_offload
        self.mixed_precision = mixed_precision
        self.activation_checkpointing = activation_checkpointing
        self.hybrid_shard = hybrid_shard
        self.blocks = blocks

    # --- processes and mesh ----------------------------------------------------------------------
    def setup_environment(self) -> None:
        """The process group, then a mesh over all ranks: ``(shard,)``, or ``(replicate, shard)`` with
        nodes as replicas under ``hybrid_shard``."""
        from torch.distributed.device_mesh import init_device_mesh

        self._setup_distributed()
        if self.hybrid_shard:
            shape, names = (self.num_nodes, self.num_processes), ("replicate", "shard")
        else:
            shape, names = (self.world_size,), ("shard",)
        self._device_mesh = init_device_mesh(self.root_device.type, shape, mesh_dim_names=names)
        assert self.lightning_module is not None
        self.lightning_module._device_mesh = self._device_mesh
        if self.world_size == 1:
            rank_zero_warn("trainer=fsdp with one process does not shard anything (each weight stays whole on its "
                           "one rank): set trainer.devices (and trainer.num_nodes) to shard over several processes")

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # --- sharding --------------------------------------------------------------------------------
    def parallelize(self, model: nn.Module) -> None:
        """Shard ``model`` in place: each transformer block, then the root. A model already sharded is
        left as it is (Lightning calls ``configure_model`` before every fit, validate and test)."""
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            FSDPModule,
            MixedPrecisionPolicy,
            fully_shard,
            register_fsdp_forward_method,
        )

        if isinstance(model, FSDPModule):
            return
        blocks = [block for _, block in find_blocks(model, self.blocks)]
        if self.activation_checkpointing:
            checkpoint_blocks(blocks)
        kwargs: dict[str, Any] = {"mesh": self.device_mesh, "reshard_after_forward": self.reshard_after_forward}
        if self.mixed_precision:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=MIXED_PRECISION[self.mixed_precision],
                                                       reduce_dtype=torch.float32)
        if self.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=self.root_device.type == "cuda")
        for block in blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        if hasattr(model, "generate"):  # generate runs the encoder, decoder and head outside forward: gather the root
            register_fsdp_forward_method(model, "generate")
        log.info("FSDP2: %d block units (%s) + the root, sharded over %d ranks%s", len(blocks),
                 type(blocks[0]).__name__ if blocks else "-", self.world_size,
                 " (hybrid: replicated across nodes)" if self.hybrid_shard else "")

    # --- checkpoints -----------------------------------------------------------------------------
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's, reading the loop state (a sharded folder's ``meta.pt``, a full file) as data only."""
        return super().load_checkpoint(checkpoint_path, weights_only=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Resume checkpoints (``last``, ``hpc_ckpt_*``) as sharded folders, written whole or not at all;
        others (``best``) as one full file, gathered on rank 0's CPU and written atomically."""
        path = Path(self.broadcast(str(filepath)))
        if path.name.startswith(SHARDED_CHECKPOINTS) and "://" not in str(filepath):
            self._save_sharded(checkpoint, path)
            return
        self._save_distributed_checkpoint = False  # Lightning's full-state gather, rank 0 writes (checkpoint_io)
        try:
            checkpoint["state_dict"] = self.lightning_module_state_dict()
            if "optimizer_states" in checkpoint:
                checkpoint["optimizer_states"] = [self.optimizer_state(opt) for opt in self.optimizers]
            super().save_checkpoint(checkpoint, path, storage_options)
        finally:
            self._save_distributed_checkpoint = True

    def _save_sharded(self, checkpoint: dict[str, Any], path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)  # a save that an earlier attempt did not finish
        self.barrier("fsdp2-checkpoint-start")
        super().save_checkpoint(checkpoint, tmp)  # every rank's shards, then .metadata and meta.pt (rank 0)
        self.barrier("fsdp2-checkpoint-written")
        if self.is_global_zero:
            replace_dir(tmp, path)
        self.barrier("fsdp2-checkpoint-done")

    def full_state_dict(self) -> dict[str, Any]:
        """The module's whole state dict on rank 0's CPU, gathered one tensor at a time (``{}`` on other
        ranks). A collective: every rank calls it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        assert self.model is not None
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))



def local_parameter_count(module: nn.Module) -> int:
    """Elements of the parameters this rank holds: its shards under FSDP2, the whole model otherwise."""
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in module.parameters())


def replace_dir(new: Path, path: Path) -> None:
    """Put folder ``new`` at ``path``; an old ``path`` is moved aside first and removed once ``new`` is in
    place, so that a crash leaves one whole checkpoint (a folder without ``meta.pt`` does not count)."""
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.is_dir():
        os.replace(path, old)
    elif path.exists():
        path.unlink()
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_blocks(blocks: list[nn.Module]) -> None:
    """Make each block recompute its activations in the backward pass (non-reentrant ``torch.utils.checkpoint``
    around its ``forward``). The blocks keep their places and names, so state-dict keys, checkpoints and
    exports are those of the plain model; FSDP2's gather hooks stay outside the recomputed region."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        block.forward = partial(checkpoint, block.forward, use_reentrant=False)


def strategy_summary(strategy: Any) -> Mapping[str, Any]:
    """What ``metrics.json`` records of an FSDP2 run (empty for other strategies)."""
    if not isinstance(strategy, FSDP2Strategy):
        return {}
    return {"mesh": dict(zip(strategy.device_mesh.mesh_dim_names or (), strategy.device_mesh.shape, strict=True)),
            "reshard_after_forward": strategy.reshard_after_forward, "cpu_offload": strategy.cpu_offload,
            "mixed_precision": strategy.mixed_precision, "activation_checkpointing": strategy.activation_checkpointing}
