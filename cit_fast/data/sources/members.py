"""Where a sample's encoded bytes live: a file, or a member of a tar shard read by offset.

A file-based SampleSet's image/mask column holds paths; a shard set's holds ``ShardMember``s, strings
that read ``SHARD.tar[key.ext]`` in messages and carry the shard, the byte offset and the size of the
member's data. Both pipelines read bytes through ``read_bytes`` (DALI) and ``image_file`` (PIL), so
plans, crops and decode reuse never know which one they read. Shards are read through ``mmap`` at
the offset the index gives, never extracted; the member's tar header is checked on each read
(checksum, a name that matches the index, no ``..`` or absolute path), so a shard that does not
match its index, is corrupt or is truncated is one DataError naming the shard and the member.
"""
from __future__ import annotations

import io
import mmap
import os
from collections import OrderedDict
from typing import Union

import numpy as np

from ...errors import DataError

BLOCK = 512  # tar block: a member's header is the block before its data (USTAR names < 100 bytes)
MAX_OPEN = 256  # mapped shards kept open per process (each holds a file descriptor)


class ShardMember(str):
    """A member of a tar shard: ``shard`` (path), ``name`` (member name), ``offset`` and ``size`` of its data."""

    def __new__(cls, shard: str, name: str, offset: int, size: int):
        s = super().__new__(cls, f"{shard}[{name}]")
        s.shard, s.name, s.offset, s.size = shard, name, int(offset), int(size)
        return s

    def __reduce__(self):  # pickled into DALI / DataLoader workers started by spawn
        return ShardMember, (self.shard, self.name, self.offset, self.size)


def unsafe_member_name(name: str) -> bool:
    """True for a name that would leave the directory if extracted: absolute, ``..``, a backslash path."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return True
    return any(part == ".." for part in name.split("/"))


_MAPS: "OrderedDict[str, mmap.mmap]" = OrderedDict()
_PID = os.getpid()


def _map(shard: str) -> mmap.mmap:
    """The shard mapped read-only, kept per process (a forked worker keeps its parent's maps: shared pages)."""
    global _PID
    if os.getpid() != _PID:  # inherited maps stay valid after fork; the LRU order is this process's own
        _PID = os.getpid()
    m = _MAPS.get(shard)
    if m is not None:
        _MAPS.move_to_end(shard)
        return m
    try:
        with open(shard, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise DataError(f"shard {shard}: file not found") from None
    except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
        raise DataError(f"shard {shard}: cannot map ({e})") from None
    _MAPS[shard] = m
    while len(_MAPS) > MAX_OPEN:
        _MAPS.popitem(last=False)[1].close()
    return m


def _header_name(hdr: bytes) -> str:
    name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if hdr[257:263] == b"ustar\0" else ""
    return f"{prefix}/{name}" if prefix else name


def check_header(hdr: bytes, shard: str, name: str) -> None:
    """The tar header block of member ``name``: a valid checksum, a safe name, the name the index gives."""
    try:
        stored = int(hdr[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        stored = -1
    if stored != sum(hdr[:148]) + 8 * 32 + sum(hdr[156:]):
        raise DataError(f"shard {shard}: member {name}: corrupt tar header (checksum mismatch): the shard does "
                        f"not match its index; rewrite it with `cit-fast shard`")
    found = _header_name(hdr)
    if unsafe_member_name(found):
        raise DataError(f"shard {shard}: member {found!r} is named with '..' or an absolute path: refused "
                        f"(shards are read in place, never extracted)")
    if found != name and not (len(found) >= 99 and name.startswith(found)):  # GNU long names: truncated field
        raise DataError(f"shard {shard}: member {name}: the tar holds {found!r} at that offset: the shard does not "
                        f"match its index; rewrite it with `cit-fast shard`")


def member_bytes(ref: ShardMember, kind: str = "member") -> memoryview:
    """The data of a shard member (a view of the mapped shard), its header checked first."""
    if unsafe_member_name(ref.name):
        raise DataError(f"shard {ref.shard}: member {ref.name!r} is named with '..' or an absolute path: refused "
                        f"(shards are read in place, never extracted)")
    m = _map(ref.shard)
    end = ref.offset + ref.size
    if ref.offset < BLOCK or end > len(m):
        raise DataError(f"shard {ref.shard}: {kind} {ref.name} (bytes {ref.offset}..{end}) lies past the end of "
                        f"the file ({len(m)} bytes): the shard is truncated; rewrite it with `cit-fast shard`")
    check_header(m[ref.offset - BLOCK:ref.offset], ref.shard, ref.name)
    if ref.size == 0:
        raise DataError(f"shard {ref.shard}: {kind} {ref.name}: empty member")
    return memoryview(m)[ref.offset:end]


def read_bytes(ref: Union[str, ShardMember], kind: str) -> np.ndarray:
    """Encoded bytes of a file or shard member as uint8, or a DataError naming it."""
    if isinstance(ref, ShardMember):
        return np.frombuffer(bytes(member_bytes(ref, kind)), dtype=np.uint8)
    try:
        data = np.fromfile(ref, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{kind} {ref}: file not found") from None
    except OSError as e:
        raise DataError(f"{kind} {ref}: cannot read ({e})") from None
    if data.size == 0:
        raise DataError(f"{kind} {ref}: empty file")
    return data


def image_file(ref: Union[str, ShardMember], kind: str = "image"):
    """What PIL's Image.open takes for ``ref``: the path of a file, the bytes of a shard member."""
    if isinstance(ref, ShardMember):
        return io.BytesIO(member_bytes(ref, kind))
    return ref
