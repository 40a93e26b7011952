"""resnet-imagenet's shard packer and streaming loader, for PyTorch.

>>> import resnet_imagenet as ri
>>> ri.pack("imagenet", "imagenet-packed")               # doctest: +SKIP
>>> loader = ri.Loader("imagenet-packed/train", 256)    # doctest: +SKIP
>>> for images, labels in loader:                       # doctest: +SKIP
...     ...  # images: [256, 3, 224, 224] float32, labels: [256] int64

Batches come as torch tensors when torch is importable (numpy arrays
otherwise), made without copying the loader's buffer; the buffer goes back
to the loader when the tensor is freed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import _native
from ._native import LoaderError

__all__ = ["Loader", "LoaderError", "pack"]

_AUGMENTS = ("train", "center", "ten_crop", "cifar")
_OUTPUTS = ("float32", "uint8")


def pack(
    input: "os.PathLike[str] | str",
    output: "os.PathLike[str] | str",
    *,
    threads: Optional[int] = None,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Dict[str, Any]:
    """Packs a class-per-folder tree (``input/train/<class>/...``,
    ``input/val/...``) into memory-mapped, checksummed shards under
    ``output``: what ``pack-imagenet input output`` does. Resumes an
    interrupted pack; a file that cannot be packed is listed in
    ``output/<split>/skipped.tsv`` (or, with ``strict``, stops the pack).
    Progress bars go to stderr when it is a terminal. Returns the summary
    of each split by name."""
    if threads is None:
        threads = os.cpu_count() or 1
    if threads < 1:
        raise ValueError(f"threads: {threads}: must be at least 1")
    summary = json.loads(
        _native.pack(os.fspath(input), os.fspath(output), threads, strict, overwrite, progress)
    )
    return {s["split"]: s for s in summary}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _env_int(name: str) -> Optional[int]:
    v = os.environ.get(name)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"{name}={v!r} in the environment is not an integer") from None


class Loader:
    """Batches of one packed split (``pack(...)``'s ``output/train`` or
    ``output/val``), augmented in Rust by a pool of worker threads.

    augment: ``"train"`` (the paper's: shorter side S ~ U[256, 480], a
    random ``crop`` square, flip, per-pixel mean subtracted), ``"center"``
    (shorter side 256/224 of ``crop``, the centre square), ``"ten_crop"``
    (corners, centre and mirrors: ten views per image, labels once per
    image), ``"cifar"`` (pad 4, random ``crop``, flip).

    rank / world_size: this process's share of every epoch, as PyTorch's
    ``DistributedSampler``; by default from ``RANK`` / ``WORLD_SIZE`` in the
    environment (as ``torch.distributed`` sets them), else 0 / 1.

    output: ``"float32"`` gives ``[B, 3, crop, crop]`` normalised float32
    (NCHW); ``"uint8"`` gives ``[B, crop, crop, 3]`` raw bytes (NHWC), to
    normalise on the GPU.

    The same arguments and seed give the same batches whatever
    ``workers``. ``state_dict()`` after k batches of an epoch, loaded into a
    new ``Loader`` with the same arguments, makes its next iteration yield
    exactly the batches after the k-th (torchdata's StatefulDataLoader
    convention), however many the first had prefetched.
    """

    def __init__(
        self,
        path: "os.PathLike[str] | str",
        batch_size: int,
        *,
        workers: Optional[int] = None,
        seed: int = 0,
        augment: str = "train",
        crop: int = 224,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        output: str = "float32",
        drop_last: bool = True,
        tensors: Optional[str] = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: {batch_size!r}: must be an integer >= 1")
        if augment not in _AUGMENTS:
            raise ValueError(f"augment: {augment!r}: expected one of {', '.join(_AUGMENTS)}")
        if output not in _OUTPUTS:
            raise ValueError(f"output: {output!r}: expected one of {', '.join(_OUTPUTS)}")
        if workers is None:
            workers = os.cpu_count() or 1
        if workers < 1:
            raise ValueError(f"workers: {workers}: must be at least 1")
        if seed < 0:
            raise ValueError(f"seed: {seed}: must be >= 0")
        if rank is None:
            rank = _env_int("RANK") or 0
        if world_size is None:
            world_size = _env_int("WORLD_SIZE") or 1
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} of world_size {world_size}: need 0 <= rank < world_size")
        if tensors not in (None, "torch", "numpy"):
            raise ValueError(f"tensors: {tensors!r}: expected 'torch', 'numpy' or None (torch if installed)")
        self._torch = None if tensors == "numpy" else _torch()
        if tensors == "torch" and self._torch is None:
            raise ValueError("tensors: 'torch' asked for, but torch is not installed")
        self._native = _native.NativeLoader(
            os.fspath(path), batch_size, workers, seed, augment, crop, rank, world_size, output, drop_last
        )
        self._args = dict(
            path=os.fspath(path), batch_size=batch_size, seed=seed, augment=augment, crop=crop,
            rank=rank, world_size=world_size, output=output, drop_last=drop_last,
        )
        self._epoch = 0
        # Batches of the current epoch already yielded (what a state saves).
        self._position = 0

    def __len__(self) -> int:
        """Batches per epoch (of this rank)."""
        return self._native.batches_per_epoch()

    @property
    def classes(self) -> List[str]:
        """The class folder names (WordNet ids for ImageNet), by label."""
        return [wnid for wnid, _ in self._native.classes()]

    @property
    def class_names(self) -> List[str]:
        """Human-readable class names, by label."""
        return [name for _, name in self._native.classes()]

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration runs (its order and augmentation), from its start."""
        if epoch < 0:
            raise ValueError(f"epoch: {epoch}: must be >= 0")
        self._native.stop()
        self._epoch = epoch
        self._position = 0

    def state_dict(self) -> Dict[str, Any]:
        """Where the loader stands: plain JSON-serialisable data."""
        return {"version": 1, "epoch": self._epoch, "position": self._position, **self._args}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continues from ``state`` (of a loader with the same arguments):
        the next iteration yields the batches after its position."""
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError(f"state: not a resnet_imagenet.Loader state: {state!r:.200}")
        for key, mine in self._args.items():
            if key == "path":
                continue
            if state.get(key) != mine:
                raise ValueError(f"state: saved with {key}={state.get(key)!r}, this loader has {key}={mine!r}")
        epoch, position = state.get("epoch"), state.get("position")
        if not isinstance(epoch, int) or not isinstance(position, int) or epoch < 0 or not 0 <= position <= len(self):
            raise ValueError(f"state: epoch {epoch!r} position {position!r} out of range (0..={len(self)} batches)")
        self._native.stop()
        self._epoch, self._position = epoch, position

    def _wrap(self, images: Any, labels: bytes) -> Tuple[Any, Any]:
        array = np.asarray(images)  # a view: its base keeps the batch alive
        label_array = np.frombuffer(labels, dtype="<i8")
        if self._torch is None:
            return array, label_array
        torch = self._torch
        return torch.from_numpy(array), torch.from_numpy(label_array.copy())

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        """The rest of the current epoch; at its end the next epoch is set."""
        n = self._native
        n.start(self._epoch, self._position)
        try:
            while True:
                got = n.next_batch()
                if got is None:
                    break
                self._position += 1
                yield self._wrap(*got)
            self._epoch += 1
            self._position = 0
        finally:
            n.stop()
