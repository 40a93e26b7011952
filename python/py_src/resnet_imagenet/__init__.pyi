import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

class LoaderError(RuntimeError):
    """A record could not be loaded (the message names the shard and the record)."""

def pack(
    input: "os.PathLike[str] | str",
    output: "os.PathLike[str] | str",
    *,
    threads: Optional[int] = ...,
    strict: bool = ...,
    overwrite: bool = ...,
    progress: bool = ...,
) -> Dict[str, Any]: ...

class Loader:
    def __init__(
        self,
        path: "os.PathLike[str] | str",
        batch_size: int,
        *,
        workers: Optional[int] = ...,
        seed: int = ...,
        augment: str = ...,
        crop: int = ...,
        rank: Optional[int] = ...,
        world_size: Optional[int] = ...,
        output: str = ...,
        drop_last: bool = ...,
        tensors: Optional[str] = ...,
    ) -> None: ...
    def __len__(self) -> int: ...
    @property
    def classes(self) -> List[str]: ...
    @property
    def class_names(self) -> List[str]: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> Dict[str, Any]: ...
    def load_state_dict(self, state: Dict[str, Any]) -> None: ...
    def __iter__(self) -> Iterator[Tuple[Any, Any]]: ...
