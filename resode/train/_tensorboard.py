"""A minimal TensorBoard event-file writer for scalars (no TensorFlow or tensorboard needed).

Event files are TFRecord files of ``Event`` protocol buffers; a scalar is an ``Event`` with a
``Summary`` holding one ``Value(tag, simple_value)``. The few fields needed are encoded by hand.
"""

import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord files use."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def _event(step: int, *, file_version: str | None = None, summary: bytes | None = None) -> bytes:
    msg = _field(1, 1, struct.pack("<d", time.time())) + _field(2, 0, _varint(step))
    if file_version is not None:
        msg += _bytes_field(3, file_version.encode())
    if summary is not None:
        msg += _bytes_field(5, summary)
    return msg


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", _masked(crc32c(header)))
        + data
        + struct.pack("<I", _masked(crc32c(data)))
    )


class EventWriter:
    """Append scalars to a new event file in `log_dir` (``tensorboard --logdir`` reads it)."""

    def __init__(self, log_dir):
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self.path = log_dir / name
        self._file = open(self.path, "ab")
        self._file.write(_record(_event(0, file_version="brain.Event:2")))

    def scalar(self, tag: str, value: float, step: int) -> None:
        value_msg = _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(value)))
        self._file.write(_record(_event(int(step), summary=_bytes_field(1, value_msg))))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
