"""Read the peers' pickled data files safely, with their big arrays memory-mapped instead of read into RAM.

The official THINGS-EEG2 files are dicts pickled inside a .npy (np.save of a dict, protocol 3), the NICE/ATM
and early NeuroBridge files are plain pickles (protocol 4) and UBP's `.pt` files are `torch.save` zip archives
whose `data.pkl` (protocol 5) holds numpy arrays or torch tensors. In each, the array bytes are stored verbatim,
so this unpickler records their file offset instead of reading them and rebuilds each array as a read-only
np.memmap: the result equals `pickle.load` / `torch.load` with arrays where tensors were.

Only data is unpickled: arrays, tensors, lists, dicts, strings, numbers and paths. Any other pickled class is
refused with a sentence (these files come from the internet; a pickle can otherwise run code). A file that is
empty, cut short, plain text or not a pickle is a DamagedError naming the file and what to do.
"""

from __future__ import annotations

import importlib
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sa.errors import DamagedError, SAError

MMAP_MIN_BYTES = 1 << 20  # payloads smaller than this are simply read
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
_NUMPY2 = int(np.__version__.split(".")[0]) >= 2


class _Truncated(Exception):
    """The stream needs bytes past the end of the file (or zip member)."""

    def __init__(self, expected: int) -> None:
        super().__init__(expected)
        self.expected = expected


class _Refused(Exception):
    """The pickle names a class that is not plain data."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


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


# ---------------------------------------------------------------- torch stand-ins (no torch import needed)

_STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bfloat16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?", "ComplexFloatStorage": "c8", "ComplexDoubleStorage": "c16", "UntypedStorage": "u1",
}


class _StorageType:
    """A torch storage class named in a pickle, reduced to the numpy dtype of its elements."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (as uint16) -> float32 values (numpy has no bfloat16)."""
    return (np.asarray(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_rest: Any) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 with a numpy storage: a strided read-only view."""
    if not size:
        return np.array(storage[offset])
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride), writeable=False)
    return view


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


def _rebuild_from_type(func: Callable, _new_type: Any, args: tuple, _state: Any) -> Any:
    return func(*args)


class _TorchClass:
    """torch.Tensor / torch.nn.Parameter / torch.Size named in a pickle."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any) -> Any:
        return tuple(args[0]) if self.name == "Size" and args else (args[0] if args else None)


_TORCH = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _TorchClass("Tensor"),
    ("torch._tensor", "Tensor"): _TorchClass("Tensor"),
    ("torch.nn.parameter", "Parameter"): _TorchClass("Parameter"),
    ("torch", "Size"): _TorchClass("Size"),
}

# plain data a pickle may name: (module, name); numpy 1.x names (numpy.core.*) are mapped to numpy 2's
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy", "memmap"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "bytearray"),
    ("builtins", "slice"), ("builtins", "range"), ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "str"), ("builtins", "bool"), ("builtins", "bytes"),
    ("_codecs", "encode"), ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
    ("pathlib", "Path"),
}


def _allowed_class(module: str, name: str) -> Any:
    """The object a pickle's GLOBAL names, if it is plain data; _Refused otherwise."""
    if module.startswith("numpy.core"):
        module = ("numpy._core" + module[len("numpy.core"):]) if _NUMPY2 else module
    elif module.startswith("numpy._core") and not _NUMPY2:
        module = "numpy.core" + module[len("numpy._core"):]
    if (module, name) in _TORCH:
        return _TORCH[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(name)
    norm = module.replace("numpy.core", "numpy._core")
    if (norm, name) in _ALLOWED or module == "numpy.dtypes":
        return getattr(importlib.import_module(module), name)
    raise _Refused(module, name)


class _MmapUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler that maps large bytes payloads and the numpy arrays built from them."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: io.BufferedReader, path: Path, end: int,
                 persistent: Callable[[Any], Any] | None = None, mmap: bool = True) -> None:
        super().__init__(file)
        self._raw, self._path, self._end = file, path, end
        self._persistent, self._mmap = persistent, mmap

    def _maybe_span(self, n: int, as_bytearray: bool) -> None:
        """Push a _Span for a big payload outside any pickle frame, else the bytes themselves."""
        start = self._raw.tell()
        if self._unframer.current_frame is None and start + n > self._end:
            raise _Truncated(start + n)
        if self._mmap and n >= MMAP_MIN_BYTES and self._unframer.current_frame is None:
            self.append(_Span(start, n))
            self._raw.seek(n, io.SEEK_CUR)
            return
        data = self.read(n)
        if len(data) < n:
            raise _Truncated(start + n)
        self.append(bytearray(data) if as_bytearray else data)

    def _load_binbytes(self) -> None:
        (n,) = struct.unpack("<I", self.read(4))
        self._maybe_span(n, False)

    def _load_binbytes8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        self._maybe_span(n, False)

    def _load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        self._maybe_span(n, True)

    def _load_frame(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        if self._raw.tell() + n > self._end:
            raise _Truncated(self._raw.tell() + n)
        self._unframer.load_frame(n)

    dispatch[pickle.FRAME[0]] = _load_frame
    dispatch[pickle.BINBYTES[0]] = _load_binbytes
    dispatch[pickle.BINBYTES8[0]] = _load_binbytes8
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("the pickle refers to data outside it (a persistent id)")
        return self._persistent(pid)

    def find_class(self, module: str, name: str) -> Any:
        path = self._path
        target = _allowed_class(module, name)
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
        return target


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


# ---------------------------------------------------------------- what is wrong with a file, in one sentence


def describe_text(head: bytes) -> str | None:
    """What a file is when its first bytes are text (a Git LFS pointer, an HTML page, plain text); None if binary."""
    if not head or b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the sample
            return None
        text = head[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    if printable < 0.95 * max(len(text), 1):
        return None
    low = text.lstrip().lower()
    if low.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the data (run `git lfs pull` where it came from, or download the file itself)"
    if low.startswith(("<!doctype html", "<html", "<?xml")):
        return "a web page, not the data (the download saved an error or login page)"
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    return f"a text file, not data (it starts with {first!r})"


def _head(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _empty(path: Path) -> DamagedError:
    return DamagedError(f"{path} is empty (0 bytes): its download or copy did not finish; download it again.")


def truncated(path: Path, expected: int, found: int, exact: bool = False) -> DamagedError:
    """The sentence for a file cut short: what it needs, what it has, and the fix."""
    need = f"expected {expected:,} bytes" if exact else f"expected at least {expected:,} bytes"
    return DamagedError(f"{path} is truncated ({need}, found {found:,}): an interrupted download or copy; "
                        "download it again.")


def _not_readable(path: Path, what: str, exc: BaseException) -> DamagedError:
    text = describe_text(_head(path))
    if text is not None:
        return DamagedError(f"{path} is {text}; replace it with the real {what}.")
    return DamagedError(f"{path} is not a readable {what} ({type(exc).__name__}: {exc}); "
                        "it is damaged or not the right file: download it again.")


def _refused(path: Path, exc: _Refused) -> SAError:
    return SAError(f"{path} pickles a {exc.module}.{exc.name} object; sa unpickles only data (arrays, tensors, lists, "
                   "dicts, strings, numbers), so save the data as plain arrays or convert the file with the code that "
                   "wrote it.")


def _unpickle(fh: io.BufferedReader, path: Path, end: int, what: str, **kwargs: Any) -> Any:
    """Run the mapping unpickler from the current position; every failure is one sentence about the file."""
    try:
        return _resolve(_MmapUnpickler(fh, path, end, **kwargs).load())
    except _Truncated as exc:
        raise truncated(path, exc.expected, path.stat().st_size) from None
    except _Refused as exc:
        raise _refused(path, exc) from None
    except (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError, IndexError, KeyError,
            AttributeError, OverflowError) as exc:
        size = path.stat().st_size
        if fh.tell() >= end and describe_text(_head(path)) is None:
            raise DamagedError(f"{path} is truncated (it ends at byte {size:,}, inside its pickled data): an "
                               "interrupted download or copy; download it again.") from None
        raise _not_readable(path, what, exc) from None


# ---------------------------------------------------------------- .npy and pickles


def npy_header(fh: io.BufferedReader, path: Path) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) of an .npy file positioned after nothing; DamagedError if the header is cut."""
    try:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(fh, max_header_size=1 << 20)
    except (ValueError, EOFError, SyntaxError, struct.error) as exc:
        size = path.stat().st_size
        if size < 128:
            raise DamagedError(f"{path} is truncated (found {size} bytes, less than an .npy header): an "
                               "interrupted download or copy; download it again.") from None
        raise DamagedError(f"{path} has a damaged .npy header ({exc}); download it again.") from None


def open_npy(path: str | Path) -> np.ndarray:
    """A plain (numeric) .npy file memory-mapped; DamagedError naming expected and found bytes if it is cut short."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise _empty(path)
    with open(path, "rb") as fh:
        if fh.read(6) != NPY_MAGIC:
            raise _not_readable(path, ".npy file", ValueError("no .npy magic"))
        fh.seek(0)
        shape, fortran, dtype = npy_header(fh, path)
        start = fh.tell()
    if dtype.hasobject:
        return load_mapped(path)
    expected = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        raise truncated(path, expected, size, exact=True)
    return np.load(path, mmap_mode="r")


def load_mapped(path: str | Path) -> Any:
    """Load a pickle, or an .npy (holding a pickled object or a plain array), with large arrays as read-only memmaps.

    For an np.save'd dict this returns the dict itself (what `np.load(...).item()` gives).
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise _empty(path)
    with open(path, "rb") as fh:
        if fh.read(6) == NPY_MAGIC:
            fh.seek(0)
            _shape, _fortran, dtype = npy_header(fh, path)
            if not dtype.hasobject:
                return open_npy(path)
            obj = _unpickle(fh, path, size, "pickled .npy file")
            return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
        fh.seek(0)
        return _unpickle(fh, path, size, "pickle file")


# ---------------------------------------------------------------- torch.save zip archives


def _member_offset(fh: io.BufferedReader, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored zip member's data (after its local header)."""
    fh.seek(info.header_offset)
    header = fh.read(30)
    if len(header) < 30 or header[:4] != ZIP_MAGIC:
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _first_member_end(fh: io.BufferedReader, path: Path) -> int | None:
    """How many bytes a truncated torch archive needs at least, from its first member (data.pkl); None if unknown.

    torch.save writes data.pkl first, often with its size only after the data, so its pickle is read from the
    local header on: a big array in it names the bytes it needs.
    """
    fh.seek(0)
    header = fh.read(30)
    if len(header) < 30 or header[:4] != ZIP_MAGIC:
        return None
    csize, _usize, name_len, extra_len = struct.unpack("<IIHH", header[18:30])
    name = fh.read(name_len)
    extra_at = 30 + name_len
    if csize == 0 and name.endswith(b"data.pkl") and header[8:10] == b"\x00\x00":  # stored, size unknown
        fh.seek(extra_at + extra_len)
        try:
            _MmapUnpickler(fh, path, path.stat().st_size, persistent=lambda pid: None).load()
        except _Truncated as exc:
            return exc.expected
        except Exception:  # noqa: BLE001 - only a size hint; the caller still reports the file as truncated
            return None
        return None
    if csize == 0xFFFFFFFF:  # zip64: the size sits in the extra field
        fh.seek(extra_at)
        extra = fh.read(extra_len)
        pos = 0
        while pos + 4 <= len(extra):
            tag, length = struct.unpack("<HH", extra[pos:pos + 4])
            if tag == 1 and length >= 16:
                _u, csize = struct.unpack("<QQ", extra[pos + 4:pos + 20])
                break
            pos += 4 + length
    return extra_at + extra_len + csize


def _torch_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            end = _first_member_end(fh, path)
            zipped = fh.seek(0) == 0 and fh.read(4) == ZIP_MAGIC
        if end is not None and end > size:
            raise truncated(path, end, size) from None
        if zipped:
            raise DamagedError(f"{path} is truncated (found {size:,} bytes and no zip directory, which torch.save "
                               "writes last): an interrupted download or copy; download it again.") from None
        raise _not_readable(path, "torch file", exc) from None


def load_torch(path: str | Path) -> Any:
    """What `torch.load(path, weights_only=False)` returns, with arrays for tensors, memory-mapped, and no warning."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise _empty(path)
    head = _head(path, 4)
    if head != ZIP_MAGIC:
        if head[:1] == b"\x80":  # torch's legacy (pre-1.6) format: let torch read it
            return _legacy_torch(path)
        raise _not_readable(path, "torch file", ValueError("not a zip archive"))
    with _torch_zip(path) as z:
        infos = {i.filename: i for i in z.infolist()}
        pkl = next((n for n in infos if n.endswith("data.pkl")), None)
        if pkl is None:
            raise DamagedError(f"{path} is a zip archive without data.pkl, so not a torch.save file; check the file.")
        prefix = pkl[: -len("data.pkl")]
        order = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in infos else "little"
        if order != "little":
            raise SAError(f"{path} was written on a {order}-endian machine; load and re-save it there with little-endian data.")
        with open(path, "rb") as fh:
            def storage(pid: Any) -> np.ndarray:
                kind, stype, key, _location, numel = pid[:5]
                if kind != "storage" or not isinstance(stype, _StorageType):
                    raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
                info = infos.get(f"{prefix}data/{key}")
                if info is None:
                    raise DamagedError(f"{path} lacks the tensor data record data/{key}; download it again.")
                dtype = np.dtype("u2") if stype.dtype == "bfloat16" else np.dtype(stype.dtype)
                if info.compress_type == zipfile.ZIP_STORED:
                    with open(path, "rb") as sfh:
                        offset = _member_offset(sfh, info)
                    if offset + numel * dtype.itemsize > size:
                        raise truncated(path, offset + numel * dtype.itemsize, size)
                    arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(int(numel),)) if numel else \
                        np.zeros(0, dtype)
                else:
                    arr = np.frombuffer(z.read(info.filename), dtype=dtype)[: int(numel)]
                return _bfloat16_to_float32(arr) if stype.dtype == "bfloat16" else arr

            info = infos[pkl]
            if info.compress_type == zipfile.ZIP_STORED:
                start = _member_offset(fh, info)
                fh.seek(start)
                return _unpickle(fh, path, start + info.file_size, "torch file", persistent=storage)
            buf = io.BufferedReader(io.BytesIO(z.read(pkl)))  # type: ignore[arg-type]
            return _unpickle(buf, path, info.file_size, "torch file", persistent=storage, mmap=False)


def _legacy_torch(path: Path) -> Any:
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure of an old-format file is one sentence
        raise _not_readable(path, "torch file", exc) from None

    def to_numpy(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: to_numpy(x) for k, x in v.items()}
        return v.numpy() if isinstance(v, torch.Tensor) else v

    return to_numpy(obj)
