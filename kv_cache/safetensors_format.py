"""The safetensors file format, without the safetensors library: planning a
file (header + tensor offsets) and parsing one.

A file is an 8-byte little-endian header length N, N bytes of JSON (padded
with spaces so the data starts 8-byte aligned), then the tensors back to back:
`{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}`, offsets relative to the data start. The format
forbids gaps between tensors, so tensors are laid out by descending element
size: each then starts at a multiple of its own element size.

Each tensor's CRC32C goes into `__metadata__` as `crc32c.<name>` (8 hex
digits); `py3fs.format` marks files written here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from py3fs import errors, wire

CRC_PREFIX = "crc32c."
MAX_HEADER = 100 * 1024 * 1024  # bytes; the library's own limit
_LEN = struct.Struct("<Q")

# torch dtype name -> (safetensors dtype, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "float64": ("F64", 8),
    "float32": ("F32", 4),
    "float16": ("F16", 2),
    "bfloat16": ("BF16", 2),
    "int64": ("I64", 8),
    "int32": ("I32", 4),
    "int16": ("I16", 2),
    "int8": ("I8", 1),
    "uint8": ("U8", 1),
    "uint16": ("U16", 2),
    "uint32": ("U32", 4),
    "uint64": ("U64", 8),
    "bool": ("BOOL", 1),
    "float8_e4m3fn": ("F8_E4M3", 1),
    "float8_e5m2": ("F8_E5M2", 1),
}
TORCH_DTYPES = {st: name for name, (st, _) in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # offsets relative to the data start
    end: int
    crc: int | None = None

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class FilePlan:
    header: bytes  # length prefix + JSON, padded: the file's first bytes
    tensors: list[TensorInfo]  # in file order
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return len(self.header)

    @property
    def size(self) -> int:
        return self.data_start + (self.tensors[-1].end if self.tensors else 0)


def torch_dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def st_dtype(dtype: Any) -> tuple[str, int]:
    try:
        return DTYPES[torch_dtype_name(dtype)]
    except KeyError:
        raise errors.InvalidArgument(f"dtype {dtype} has no safetensors name") from None


def checksum(view: memoryview) -> int:
    return wire.crc32c(view)


def plan(
    tensors: dict[str, tuple[Any, tuple[int, ...], memoryview]],
    metadata: dict[str, str] | None = None,
) -> FilePlan:
    """Lay out `tensors` (name -> (torch dtype, shape, bytes)) with their
    checksums; `metadata` joins the header's `__metadata__`."""
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise errors.InvalidArgument("safetensors metadata must map str to str")
    order = sorted(tensors, key=lambda n: -st_dtype(tensors[n][0])[1])
    infos = []
    offset = 0
    header: dict[str, Any] = {}
    for name in order:
        dtype, shape, view = tensors[name]
        st, _ = st_dtype(dtype)
        crc = checksum(view)
        info = TensorInfo(name, st, tuple(shape), offset, offset + view.nbytes, crc)
        infos.append(info)
        header[name] = {
            "dtype": st,
            "shape": list(shape),
            "data_offsets": [info.begin, info.end],
        }
        meta[CRC_PREFIX + name] = f"{crc:08x}"
        offset = info.end
    meta.setdefault("py3fs.format", "1")
    header["__metadata__"] = meta
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + _LEN.size) % 8)
    return FilePlan(_LEN.pack(len(raw)) + raw, infos, meta)


def header_length(first8: bytes) -> int:
    if len(first8) < _LEN.size:
        raise errors.InvalidArgument("not a safetensors file: shorter than 8 bytes")
    (n,) = _LEN.unpack(first8[: _LEN.size])
    if n > MAX_HEADER:
        raise errors.InvalidArgument(f"safetensors header of {n} bytes is too large")
    return int(n)


def parse(header_json: bytes) -> FilePlan:
    """The plan of a file from its JSON header (without the length prefix)."""
    try:
        header = json.loads(header_json)
    except ValueError as exc:
        raise errors.InvalidArgument(f"bad safetensors header: {exc}") from None
    meta = header.pop("__metadata__", None) or {}
    infos = []
    for name, h in header.items():
        begin, end = h["data_offsets"]
        crc = meta.get(CRC_PREFIX + name)
        infos.append(
            TensorInfo(
                name,
                h["dtype"],
                tuple(h["shape"]),
                begin,
                end,
                int(crc, 16) if crc is not None else None,
            )
        )
    infos.sort(key=lambda t: t.begin)
    prefix = _LEN.pack(len(header_json)) + header_json
    return FilePlan(prefix, infos, meta)
