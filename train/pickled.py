"""Unpickle THINGS data files with their big arrays memory-mapped instead of read into RAM.

The official THINGS-EEG2 files are dicts pickled inside a .npy (np.save of a
dict) and the NICE/ATM files are plain pickles, so `np.load(mmap_mode=...)`
cannot map them. The array bytes are still stored verbatim in the pickle
stream; this unpickler records their file offset instead of reading them and
rebuilds each numpy array as a read-only np.memmap. Anything it does not
recognise is unpickled normally, so the result always equals `pickle.load`.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

MMAP_MIN_BYTES = 1 << 20  # payloads smaller than this are simply read


class _Span:
    """Where a large bytes payload sits in the file (read lazily)."""

    def __init__(self, offset: int, length: int) -> None:
        self.offset, self.length = offset, length


class _LazyArray:
    """Stands in for an ndarray rebuilt by numpy's `_reconstruct` + `__setstate__`."""

    path: Path
    value: Any = None

    def __setstate__(self, state: tuple) -> None:
        _version, shape, dtype, fortran, raw = state
        self.value = _array_from(self.path, raw, np.dtype(dtype), tuple(shape), "F" if fortran else "C")


def _array_from(path: Path, raw: Any, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    """An array from in-band bytes, an object list, or a memory-mapped span of the file."""
    if isinstance(raw, _Span):
        return np.memmap(path, dtype=dtype, mode="r", offset=raw.offset, shape=shape, order=order)
    if dtype.hasobject:
        arr = np.empty(shape, dtype=object)
        if arr.ndim == 0:
            arr[()] = raw[0]
        else:
            arr.ravel(order=order)[:] = raw  # ravel of a fresh array is a view
        return arr
    if isinstance(raw, str):  # protocol 2 stores bytes as latin-1 text
        raw = raw.encode("latin1")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order).copy()


class _MmapUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler that maps large bytes payloads and numpy arrays built from them."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: io.BufferedReader, path: Path) -> None:
        super().__init__(file)
        self._raw, self._path = file, path

    def _maybe_span(self, n: int, as_bytearray: bool) -> None:
        """Push a _Span for a big payload outside any pickle frame, else the bytes themselves."""
        if n >= MMAP_MIN_BYTES and self._unframer.current_frame is None:
            self.append(_Span(self._raw.tell(), n))
            self._raw.seek(n, io.SEEK_CUR)
        elif as_bytearray:
            buf = bytearray(n)
            self.readinto(buf)
            self.append(buf)
        else:
            self.append(self.read(n))

    def _load_binbytes(self) -> None:
        (n,) = struct.unpack("<I", self.read(4))
        self._maybe_span(n, False)

    def _load_binbytes8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        self._maybe_span(n, False)

    def _load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        self._maybe_span(n, True)

    dispatch[pickle.BINBYTES[0]] = _load_binbytes
    dispatch[pickle.BINBYTES8[0]] = _load_binbytes8
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

    def find_class(self, module: str, name: str) -> Any:
        path = self._path
        if name == "_reconstruct" and "multiarray" in module:

            def _reconstruct(_cls: Any, _shape: Any, _typecode: Any) -> _LazyArray:
                lazy = _LazyArray()
                lazy.path = path
                return lazy

            return _reconstruct
        if name == "_frombuffer" and module.startswith("numpy"):

            def _frombuffer(buf: Any, dtype: Any, shape: tuple, order: str) -> np.ndarray:
                return _array_from(path, buf, np.dtype(dtype), tuple(shape), order)

            return _frombuffer
        return super().find_class(module, name)


def _resolve(obj: Any) -> Any:
    """Replace _LazyArray placeholders (in dicts, lists, tuples, object arrays) by their arrays."""
    if isinstance(obj, _LazyArray):
        return _resolve(obj.value)
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        out = np.empty(obj.shape, dtype=object)
        for idx in np.ndindex(obj.shape):
            out[idx] = _resolve(obj[idx])
        return out
    return obj


def load_mapped(path: str | Path) -> Any:
    """Load a pickle, or an .npy holding a pickled object, with large arrays as read-only memmaps.

    For an np.save'd dict this returns the dict itself (what `np.load(...).item()` gives).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(6) == b"\x93NUMPY":
            fh.seek(0)
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _shape, _fortran, dtype = read_header(fh, max_header_size=1 << 20)
            if not dtype.hasobject:
                return np.load(path, mmap_mode="r")
            obj = _resolve(_MmapUnpickler(fh, path).load())
            return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
        fh.seek(0)
        return _resolve(_MmapUnpickler(fh, path).load())
