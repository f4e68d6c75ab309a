"""Triton's shared-memory extensions: tensors a co-located client passes through memory it shares.

A client creates a region (POSIX shared memory, ``/dev/shm/<key>``, or a CUDA allocation it
exports as a ``cudaIpcMemHandle_t``), registers it under a name, and then names the region, an
offset and a byte size in an input's or requested output's parameters instead of sending bytes.
`SharedMemoryRegistry` holds the registered regions for both front ends (HTTP and gRPC share one
namespace, as Triton's do) and checks every access against the region's bounds.

The server maps the client's region and never creates or unlinks one: ``/dev/shm`` is left as the
client made it. It maps only regular objects owned by its own user, never through a symbolic link:
a client cannot turn it on files or other users' memory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import ctypes.util
import mmap
import os
import stat
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from crossinfer.errors import ProtocolError

__all__ = [
    "CUDA",
    "CUDA_UNAVAILABLE",
    "SYSTEM",
    "CudaMemory",
    "CudaOpener",
    "OutputSlot",
    "SharedMemoryRegistry",
    "decode_raw_handle",
]

SYSTEM = "system"
CUDA = "cuda"
_KIND_NAMES = {SYSTEM: "system shared memory", CUDA: "CUDA shared memory"}

CUDA_UNAVAILABLE = "CUDA shared memory needs a CUDA GPU and torch with CUDA on the server"
"""The answer to a CUDA register request on a server that cannot open CUDA IPC handles."""

_SHM_DIR = "/dev/shm"
_IPC_HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t)
_NAME_MAX = 255


class CudaMemory(Protocol):
    """A client's CUDA allocation opened in this process (through its IPC handle)."""

    def read(self, offset: int, size: int) -> bytes | memoryview:
        """``size`` bytes from ``offset``, copied to the host."""
        ...

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Copy ``data`` from the host to ``offset``."""
        ...

    def close(self) -> None:
        """Close the IPC mapping (the client keeps its allocation)."""
        ...


CudaOpener = Callable[[bytes, int, int], CudaMemory]
"""Opens (raw cudaIpcMemHandle_t, device id, byte size) or raises `ProtocolError`."""

HostPinner = Callable[[int, int], Callable[[], None] | None]
"""Page-locks (address, byte size) of host memory; returns how to undo it, or None if it did not."""


# --------------------------------------------------------------------------- regions


class _SystemRegion:
    """A registered slice ``[offset, offset + byte_size)`` of a POSIX shared-memory object."""

    kind = SYSTEM

    def __init__(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        path = os.path.join(_SHM_DIR, _object_name(key, name))
        try:
            # as shm_open does: never through a symbolic link, which anyone may plant in
            # /dev/shm to point the server at a file of its own (it maps read-write)
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProtocolError(
                400,
                f"cannot register system shared memory region '{name}': no shared memory "
                f"object with key '{key}' exists ({path}): create it first "
                "(tritonclient.utils.shared_memory.create_shared_memory_region)",
            ) from None
        except OSError as exc:
            raise ProtocolError(
                400,
                f"cannot register system shared memory region '{name}': cannot open key "
                f"'{key}' ({path}): {exc.strerror or exc}",
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ProtocolError(
                    400,
                    f"cannot register system shared memory region '{name}': key '{key}' is not "
                    "a shared memory object",
                )
            if info.st_uid != os.geteuid():
                # the server maps read-write with its own rights: a client must not reach, say,
                # a root server's objects of other programs through it
                raise ProtocolError(
                    400,
                    f"cannot register system shared memory region '{name}': key '{key}' belongs "
                    f"to uid {info.st_uid}, not to the user the server runs as (uid "
                    f"{os.geteuid()}): create the object as that user",
                )
            size = info.st_size
            end = offset + byte_size
            if end > size:
                raise ProtocolError(
                    400,
                    f"cannot register system shared memory region '{name}': offset {offset} + "
                    f"byte_size {byte_size} = {end} is beyond the end of key '{key}', which "
                    f"holds {size} bytes",
                )
            # mmap offsets must be page-aligned: map from the page holding `offset`
            self._start = offset % mmap.ALLOCATIONGRANULARITY
            self._end = end  # in the object, for the truncation check
            self._mm = mmap.mmap(
                fd, self._start + byte_size, mmap.MAP_SHARED, offset=offset - self._start
            )
            self._unpin: Callable[[], None] | None = None
        finally:
            os.close(fd)  # mmap keeps its own duplicate of the descriptor

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }

    def view(self, offset: int, size: int) -> memoryview:
        """A writable view of the region's bytes ``[offset, offset + size)`` (bounds checked)."""
        # a client that shrank its object since registering would make any access a SIGBUS
        # that kills the server: check the object still covers the region first
        try:
            object_size = self._mm.size()
            whole = memoryview(self._mm)
        except ValueError:  # closed: unregistered between the lookup and now (another thread)
            raise ProtocolError(
                400,
                f"system shared memory region '{self.name}' was unregistered while this "
                "request was being read: register it again",
            ) from None
        if object_size < self._end:
            raise ProtocolError(
                400,
                f"system shared memory region '{self.name}' (key '{self.key}') was truncated "
                f"by its owner to {object_size} bytes since it was registered: "
                "unregister it and register it again",
            )
        start = self._start + offset
        # the view holds the mapping open: unregistering mid-request leaves it valid until the
        # request is done with it (mmap.close refuses while views exist)
        return whole[start : start + size]

    def read(self, offset: int, size: int) -> memoryview:
        return self.view(offset, size)

    def pin(self, pin_host: HostPinner) -> None:
        """Page-lock the mapping with `pin_host` (CUDA's cudaHostRegister): inputs in it then
        go to the device as one DMA each, with no join on the host. Best effort: a refusal
        leaves the region as it was."""
        address = np.frombuffer(self._mm, dtype=np.uint8).ctypes.data  # the export ends here
        self._unpin = pin_host(address, len(self._mm))

    def close(self) -> None:
        unpin, self._unpin = self._unpin, None
        if unpin is not None:
            unpin()
        # a request still reading or writing it keeps it mapped until its last view is gone
        with contextlib.suppress(BufferError):
            self._mm.close()


class _CudaRegion:
    """A registered CUDA allocation of another process, opened through its IPC handle.

    Requests that will write an output here hold it (`acquire`/`release`): unregistering
    closes the IPC mapping only once the last of them is done, never under a copy.
    """

    kind = CUDA

    def __init__(self, name: str, memory: CudaMemory, device_id: int, byte_size: int) -> None:
        self.name, self.device_id, self.byte_size = name, device_id, byte_size
        self.memory = memory
        self._users = 0
        self._closing = False
        self._lock = threading.Lock()  # writes may finish in a worker thread

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}

    def read(self, offset: int, size: int) -> bytes | memoryview:
        return self.memory.read(offset, size)

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            self.memory.close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            idle = self._users == 0
        if idle:
            self.memory.close()


_Region = _SystemRegion | _CudaRegion


class OutputSlot:
    """Where a requested output goes: ``byte_size`` bytes at ``offset`` of a registered region.

    The slot holds the region from the request's parsing to its answer, so a region
    unregistered meanwhile still receives the output (as Triton's in-flight requests do).
    """

    def __init__(self, tensor: str, region: _Region, offset: int, byte_size: int) -> None:
        self.tensor, self.region, self.offset, self.byte_size = tensor, region, offset, byte_size
        self._view: memoryview | None = None
        self._done: Callable[[], Any] = lambda: None
        if isinstance(region, _SystemRegion):
            # an exported view keeps the mapping open whatever happens to the registration
            self._view = region.view(offset, byte_size)
        else:
            region.acquire()
            # released after the write, or when a failed request drops the slot unwritten
            self._done = weakref.finalize(self, region.release)

    def write(self, data: bytes | memoryview) -> dict[str, Any]:
        """Copy an output's bytes into the region; where they went (region, byte size, offset)."""
        size = len(data)
        if size > self.byte_size:
            raise ProtocolError(
                400,
                f"shared memory size specified with the request for output '{self.tensor}' "
                f"({self.byte_size} bytes) should be at least {size} bytes to hold the results "
                f"(region '{self.region.name}')",
            )
        try:
            if self._view is not None:
                assert isinstance(self.region, _SystemRegion)
                # asked again (not self._view): the object's size is checked once more, as late
                # as possible; self._view keeps the mapping open meanwhile
                self.region.view(self.offset, size)[:] = data
            else:
                assert isinstance(self.region, _CudaRegion)
                self.region.memory.write(self.offset, data)
        finally:
            self._done()
        params: dict[str, Any] = {
            "shared_memory_region": self.region.name,
            "shared_memory_byte_size": size,
        }
        if self.offset:
            params["shared_memory_offset"] = self.offset
        return params


# --------------------------------------------------------------------------- the registry


class SharedMemoryRegistry:
    """The regions clients registered, by name; one namespace for system and CUDA regions.

    ``cuda_opener`` opens a CUDA IPC handle (tests set a fake one); by default (None) CUDA
    regions are opened with the CUDA runtime when torch with CUDA is importable and a GPU is
    present.
    Registering, unregistering and status run on the server's event loop; `input_data`,
    `output_slot` (parsing a large request) and `OutputSlot.write` (encoding a large answer) may
    run in a worker thread: they only read the table.
    """

    def __init__(
        self, *, cuda_opener: CudaOpener | None = None, pin_host: HostPinner | None = None
    ) -> None:
        self._regions: dict[str, _Region] = {}
        self.cuda_opener = cuda_opener
        # pins system regions for DMA (tests set a fake one); by default (None) they are pinned
        # with CUDA where this process already computes on a GPU (`_pin_for_cuda`)
        self.pin_host = pin_host

    # --- register, status, unregister --------------------------------------------------------

    def register_system(self, name: str, key: str, *, offset: int, byte_size: int) -> None:
        """Map ``[offset, offset + byte_size)`` of the POSIX shared memory object ``key``."""
        self._check_new(name, SYSTEM)
        _check_size(byte_size, offset, name, SYSTEM)
        region = _SystemRegion(name, key, offset, byte_size)
        region.pin(self.pin_host or _pin_for_cuda)
        self._regions[name] = region

    async def register_cuda(
        self, name: str, raw_handle: bytes, *, device_id: int, byte_size: int
    ) -> None:
        """Open a client's CUDA allocation from its ``cudaIpcMemHandle_t`` (64 raw bytes).

        Opening imports torch and creates a CUDA context (seconds the first time): it runs in a
        worker thread, and the region is added back on the event loop.
        """
        self._check_new(name, CUDA)
        _check_size(byte_size, 0, name, CUDA)
        if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
            raise ProtocolError(
                400,
                f"cannot register CUDA shared memory region '{name}': device_id must be a "
                f"non-negative integer, got {device_id!r}",
            )
        if len(raw_handle) != _IPC_HANDLE_BYTES:
            raise ProtocolError(
                400,
                f"cannot register CUDA shared memory region '{name}': raw_handle must be a "
                f"{_IPC_HANDLE_BYTES}-byte cudaIpcMemHandle_t, got {len(raw_handle)} bytes",
            )
        opener = self.cuda_opener or _open_cuda_ipc
        memory = await asyncio.to_thread(opener, bytes(raw_handle), device_id, byte_size)
        try:
            self._check_new(name, CUDA)  # a concurrent register may have taken the name
        except ProtocolError:
            memory.close()
            raise
        self._regions[name] = _CudaRegion(name, memory, device_id, byte_size)

    def status(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        """Every region of ``kind`` (SYSTEM or CUDA), or the one named; 404 for an unknown name."""
        if name:
            region = self._regions.get(name)
            if region is None or region.kind != kind:
                raise ProtocolError(
                    404,
                    f"no {_KIND_NAMES[kind]} region named '{name}' is registered "
                    f"(registered: {self._names(kind)})",
                )
            return [region.status()]
        return [r.status() for r in self._regions.values() if r.kind == kind]

    def unregister(self, kind: str, name: str | None = None) -> None:
        """Forget the region ``name`` of ``kind``, or every region of ``kind``.

        An unknown name is not an error (Triton's behaviour: unregistering is idempotent).
        Requests that already hold the region finish with it.
        """
        names = [n for n, r in self._regions.items() if r.kind == kind and (not name or n == name)]
        for n in names:
            self._regions.pop(n).close()

    def close(self) -> None:
        """Unregister everything (the server is stopping)."""
        for region in self._regions.values():
            region.close()
        self._regions.clear()

    def __len__(self) -> int:
        return len(self._regions)

    # --- access from inference requests ------------------------------------------------------

    def input_data(
        self, tensor: str, region_name: str, offset: int, byte_size: int
    ) -> memoryview | bytes:
        """The bytes an input names: a zero-copy view of system memory, a copy of CUDA memory."""
        region = self._for_tensor(f"input '{tensor}'", region_name, offset, byte_size)
        return region.read(offset, byte_size)

    def output_slot(self, tensor: str, region_name: str, offset: int, byte_size: int) -> OutputSlot:
        """Where requested output ``tensor`` is to be written (the region is held till then)."""
        region = self._for_tensor(f"requested output '{tensor}'", region_name, offset, byte_size)
        return OutputSlot(tensor, region, offset, byte_size)

    # --- checks ------------------------------------------------------------------------------

    def _for_tensor(self, what: str, region_name: str, offset: int, byte_size: int) -> _Region:
        region = self._regions.get(region_name)
        if region is None:
            raise ProtocolError(
                400,
                f"{what} names shared memory region '{region_name}', which is not registered "
                f"(registered: {self._names()}): register it first",
            )
        end = offset + byte_size
        if end > region.byte_size:
            raise ProtocolError(
                400,
                f"{what} uses bytes [{offset}, {end}) of shared memory region '{region_name}', "
                f"which holds only {region.byte_size} bytes: shared_memory_offset + "
                "shared_memory_byte_size must lie within the region",
            )
        return region

    def _check_new(self, name: str, kind: str) -> None:
        if not name:
            raise ProtocolError(400, f"a {_KIND_NAMES[kind]} region needs a non-empty name")
        existing = self._regions.get(name)
        if existing is not None:
            raise ProtocolError(
                409,
                f"shared memory region '{name}' is already registered (as "
                f"{_KIND_NAMES[existing.kind]}): unregister it first or choose another name",
            )

    def _names(self, kind: str | None = None) -> str:
        names = [f"'{n}'" for n, r in self._regions.items() if kind is None or r.kind == kind]
        return ", ".join(names) or "none"


def decode_raw_handle(raw: Any, name: str) -> bytes:
    """The bytes of an HTTP register request's ``raw_handle``: ``{"b64": "<base64>"}``."""
    b64 = raw.get("b64") if isinstance(raw, dict) else None
    if not isinstance(b64, str):
        raise ProtocolError(
            400,
            f"cannot register CUDA shared memory region '{name}': 'raw_handle' must be "
            '{"b64": "<base64 of the cudaIpcMemHandle_t>"}',
        )
    try:
        return base64.b64decode(b64, validate=True)
    except ValueError:
        raise ProtocolError(
            400,
            f"cannot register CUDA shared memory region '{name}': raw_handle.b64 is not base64",
        ) from None


def _object_name(key: str, name: str) -> str:
    """The file name under /dev/shm for a POSIX shm key ("/input" or "input" -> "input")."""
    base = key[1:] if key.startswith("/") else key
    if not base or "/" in base or "\0" in base or base in (".", "..") or len(base) > _NAME_MAX:
        raise ProtocolError(
            400,
            f"cannot register system shared memory region '{name}': key {key[:300]!r} is not a "
            "POSIX shared memory name: use '/name' with no other '/' (at most 255 characters)",
        )
    return base


def _check_size(byte_size: Any, offset: Any, name: str, kind: str) -> None:
    for what, value, low in (("byte_size", byte_size, 1), ("offset", offset, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ProtocolError(
                400,
                f"cannot register {_KIND_NAMES[kind]} region '{name}': {what} must be an "
                f"integer >= {low}, got {value!r}",
            )


# --------------------------------------------------------------------------- CUDA IPC


class _CudaRuntime:
    """The few CUDA runtime calls CUDA shared memory needs, through the libcudart torch loaded."""

    _HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2
    _LAZY_ENABLE_PEER_ACCESS = 1

    def __init__(self) -> None:
        lib = None
        for candidate in (
            "libcudart.so.13",
            "libcudart.so.12",
            "libcudart.so.11.0",
            "libcudart.so",
        ):
            try:
                lib = ctypes.CDLL(candidate)
                break
            except OSError:
                continue
        if lib is None:
            found = ctypes.util.find_library("cudart")
            if found is None:
                raise ProtocolError(501, f"{CUDA_UNAVAILABLE} (libcudart was not found)")
            lib = ctypes.CDLL(found)
        self._lib = lib

    def check(self, code: int, what: str) -> None:
        if code != 0:
            self._lib.cudaGetErrorString.restype = ctypes.c_char_p
            text = self._lib.cudaGetErrorString(code)
            raise ProtocolError(
                400, f"{what} failed: {text.decode() if text else f'CUDA error {code}'}"
            )

    def set_device(self, device_id: int) -> None:
        self.check(self._lib.cudaSetDevice(ctypes.c_int(device_id)), f"cudaSetDevice({device_id})")

    def open_handle(self, handle: bytes) -> int:
        class IpcHandle(ctypes.Structure):  # cudaIpcMemHandle_t, passed by value
            _fields_ = [("reserved", ctypes.c_ubyte * _IPC_HANDLE_BYTES)]

        ptr = ctypes.c_void_p()
        self.check(
            self._lib.cudaIpcOpenMemHandle(
                ctypes.byref(ptr),
                IpcHandle.from_buffer_copy(handle),
                ctypes.c_uint(self._LAZY_ENABLE_PEER_ACCESS),
            ),
            "cudaIpcOpenMemHandle",
        )
        return int(ptr.value or 0)

    def host_register(self, address: int, size: int) -> int:
        code = int(
            self._lib.cudaHostRegister(
                ctypes.c_void_p(address), ctypes.c_size_t(size), ctypes.c_uint(0)
            )
        )
        if code:
            self._lib.cudaGetLastError()  # a refusal must not surface in torch's next check
        return code

    def host_unregister(self, address: int) -> None:
        if self._lib.cudaHostUnregister(ctypes.c_void_p(address)):
            self._lib.cudaGetLastError()

    def close_handle(self, ptr: int) -> None:
        self._lib.cudaIpcCloseMemHandle(ctypes.c_void_p(ptr))

    def copy(self, dst: int, src: int, size: int, kind: int) -> None:
        self.check(
            self._lib.cudaMemcpy(
                ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(size), kind
            ),
            "cudaMemcpy",
        )


class _IpcMemory:
    """A client's allocation opened with cudaIpcOpenMemHandle; reads and writes copy."""

    def __init__(self, runtime: _CudaRuntime, device_id: int, ptr: int, byte_size: int) -> None:
        self._rt, self._device, self._ptr, self.byte_size = runtime, device_id, ptr, byte_size

    def read(self, offset: int, size: int) -> memoryview:
        """Copied into page-locked memory: a DMA at the link's speed, and the batch then goes
        back to the device by DMA too (torch on CUDA joins pinned rows on the device)."""
        import torch

        out = torch.empty(size, dtype=torch.uint8, pin_memory=True).numpy()
        self._rt.set_device(self._device)
        self._rt.copy(out.ctypes.data, self._ptr + offset, size, _CudaRuntime._DEVICE_TO_HOST)
        return out.data  # keeps the pinned buffer alive as long as the view

    def write(self, offset: int, data: bytes | memoryview) -> None:
        source = (ctypes.c_char * len(data)).from_buffer_copy(data)
        self._rt.set_device(self._device)
        self._rt.copy(
            self._ptr + offset, ctypes.addressof(source), len(data), _CudaRuntime._HOST_TO_DEVICE
        )

    def close(self) -> None:
        if self._ptr:
            self._rt.set_device(self._device)
            self._rt.close_handle(self._ptr)
            self._ptr = 0


def _pin_for_cuda(address: int, size: int) -> Callable[[], None] | None:
    """cudaHostRegister a region where this process already computes on CUDA (a torch session
    on a GPU initialized it; nothing is imported or initialized here): a batch's rows are then
    copied from the region to the device by DMA, with no join in host memory. None elsewhere,
    or where CUDA refuses (the region then works as before, through the host)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    try:
        runtime = _CudaRuntime()
        runtime.check(runtime.host_register(address, size), f"cudaHostRegister of {size} bytes")
    except ProtocolError:
        return None
    return lambda: runtime.host_unregister(address)


def _open_cuda_ipc(handle: bytes, device_id: int, byte_size: int) -> CudaMemory:
    """Open a CUDA IPC handle with the CUDA runtime torch brings (501 where there is none)."""
    try:
        import torch
    except ImportError:
        raise ProtocolError(501, f"{CUDA_UNAVAILABLE} (torch is not installed)") from None
    if not torch.cuda.is_available():
        raise ProtocolError(501, f"{CUDA_UNAVAILABLE} (torch sees no CUDA device)")
    count = torch.cuda.device_count()
    if device_id >= count:
        raise ProtocolError(
            400, f"CUDA device {device_id} does not exist: this server sees {count} device(s)"
        )
    torch.cuda.init()  # type: ignore[no-untyped-call]  # loads libcudart into the process and creates the context
    runtime = _CudaRuntime()
    runtime.set_device(device_id)
    ptr = runtime.open_handle(handle)
    return _IpcMemory(runtime, device_id, ptr, byte_size)
