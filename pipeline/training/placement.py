"""Where training runs: the device and process group (torchrun), and whether a split fits on the device."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..data.batches import DeviceBatches, StreamBatches
from ..data.loading import Dataset
from ..errors import CnnpipeError
from ..options.training import TrainConfig


def fits_in_memory(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` takes at most a quarter of the device's free memory."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return nbytes <= free // 4


def train_source(dataset: Dataset, config: TrainConfig, device: torch.device) -> DeviceBatches | StreamBatches:
    """The training split on the device when it fits (or ``--loader device``), else streamed."""
    images, labels = dataset.arrays("train", mmap=True)
    stream = config.loader == "stream" or (config.loader == "auto" and not fits_in_memory(images.nbytes, device))
    if stream:
        return StreamBatches(images, labels, device, config.workers)
    return DeviceBatches(images, labels, device)


def eval_batch_size(n: int, limit: int) -> int:
    """The largest batch size ≤ ``limit`` that divides ``n`` (no ragged batch to recompile for)."""
    return next(b for b in range(min(n, limit), 0, -1) if n % b == 0)


def distributed(device_choice: str) -> tuple[int, int, torch.device | None]:
    """Rank and world size under torchrun (initialising the process group), else (0, 1, None)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    cuda = torch.cuda.is_available() and device_choice != "cpu"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda and local >= torch.cuda.device_count():
        raise CnnpipeError(
            f"{world} processes on CUDA need one GPU each, and this machine has {torch.cuda.device_count()}; "
            "use fewer processes or --device cpu"
        )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device
