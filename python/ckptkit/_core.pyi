"""Type stubs for the nanobind extension ckptkit._core (use the ckptkit package)."""

from typing import Any, Optional, Sequence

import numpy as np

class CorruptCheckpointError(ValueError): ...
class UnsupportedError(NotImplementedError): ...

class Reader:
    @property
    def format(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def tensors(self) -> list[dict[str, Any]]: ...
    def objects(self) -> list[dict[str, Any]]: ...
    def details_json(self) -> str: ...
    def find(self, key: str) -> int: ...
    def read_region_into(self, index: int, start: list[int], count: list[int], buffer: np.ndarray) -> None: ...
    def read_into(self, index: int, buffer: np.ndarray) -> None: ...
    def close(self) -> None: ...

def open(path: str, mode: str = "strict") -> Reader: ...
def convert(
    src: str,
    dst: str,
    to: str,
    max_shard_size: Optional[str] = None,
    allow_opaque: bool = False,
    thread_count: int = 1,
    megatron_version: str = "",
    iteration: Optional[int] = None,
    hf_config: str = "",
    family: str = "",
    vocab_size: Optional[int] = None,
    dtype: str = "",
    bin: bool = False,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    etp: Optional[int] = None,
    megatron_layer_spec: str = "local",
    make_vocab_size_divisible_by: int = 128,
    no_optimizer: bool = False,
) -> dict[str, Any]: ...
def reshard(
    src: str,
    dst: str,
    tp: int = 0,
    pp: int = 0,
    vpp: int = 0,
    dp: int = 0,
    ep: int = 0,
    etp: int = 0,
    vocab_size: Optional[int] = None,
    to: str = "torch_dist",
    optimizer_sharding: str = "fully_reshardable",
    no_optimizer: bool = False,
    megatron_version: str = "",
    iteration: Optional[int] = None,
    thread_count: int = 1,
    check: bool = False,
) -> dict[str, Any]: ...
def parse_size(text: str) -> int: ...
def save_file(
    path: str,
    format: str,
    entries: Sequence[tuple[str, str, tuple[int, ...], Any]],
    metadata: Optional[dict[str, str]] = None,
) -> None: ...
def write_dcp_files(
    dir: str, prefix: str, files: Sequence[Sequence[tuple[str, Optional[str], Optional[tuple[int, ...]], Any]]]
) -> list[list[tuple[str, int, int]]]: ...
def shared_staging_path(dst: str) -> str: ...
def commit_dcp_folder(
    dst: str, staging: Optional[str], files: Sequence[str], metadata: bytes,
    metadata_name: str = ".metadata", prune: bool = True
) -> None: ...
def _set_write_faults(
    space_limit: Optional[int] = None, fail_nth_append: Optional[int] = None, path_contains: str = ""
) -> None: ...
def _clear_write_faults() -> None: ...

class StagingPool:
    def __init__(self, capacity: int) -> None: ...
    def acquire(self, sizes: Sequence[int], timeout_s: float) -> list[Any]: ...
    @property
    def capacity(self) -> int: ...
    @property
    def in_use(self) -> int: ...
    @property
    def peak(self) -> int: ...
    @staticmethod
    def footprint(sizes: Sequence[int]) -> int: ...
def read_dcp_tensors(
    path: str, requests: Sequence[tuple[str, int, int, Optional[Sequence[str]], str, tuple[int, ...], Any]]
) -> None: ...
def read_dcp_bytes(path: str, offset: int, length: int, transforms: Optional[Sequence[str]] = None) -> bytes: ...
