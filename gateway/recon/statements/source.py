"""A statement's bytes as a stream of text lines: gzip or zip member → incremental decode → lines, one chunk at a
time, so that a million-row statement never exists as one decoded string or one list of lines.

The packing layers are the standard library's (``gzip.GzipFile``, ``zipfile.ZipFile.open``: both check their
CRC as the last chunk is read, so a damaged file fails at its end). What is ours is the decoding: the channels
do not say their encoding (WeChat writes UTF-8, Alipay GBK, and exports of either turn up in the other), so the
first bytes that are not ASCII decide, and a stream that later stops being valid in the chosen encoding fails
the batch rather than being read as mojibake.
"""

from __future__ import annotations

import codecs
import gzip
import io
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from typing import IO

from gateway.recon.normalize import StatementError

CHUNK = 1 << 20
"""Bytes decoded at a time: large enough that per-chunk work is noise, small enough to bound memory."""
SNIFF = 1 << 16
"""Bytes of text, from the first non-ASCII one, that decide between UTF-8 and GB18030."""
MAX_LINE = 1 << 16
"""Characters in one line at most (a real row is a few hundred)."""
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""What ``str.splitlines`` splits on: a stream splits exactly as the whole text did."""
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK"


def _read_chunks(stream: io.BufferedIOBase | IO[bytes], what: str) -> Iterator[bytes]:
    try:
        while chunk := stream.read(CHUNK):
            yield chunk
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise StatementError(f"{what}: the compressed file is damaged or cut short: {exc}") from None


def gunzipped(data: bytes, what: str) -> Iterator[bytes]:
    """The bytes of a gzip download (every member), or ``data`` itself when it is not gzip."""
    if not data.startswith(GZIP_MAGIC):
        for i in range(0, len(data), CHUNK):
            yield data[i : i + CHUNK]
        return
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        yield from _read_chunks(stream, what)


def zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> Iterator[bytes]:
    try:
        stream = archive.open(info)
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
        raise StatementError(f"{what}: cannot open {info.filename!r} in the zip: {exc}") from None
    with stream:
        yield from _read_chunks(stream, what)


def _encoding_of(sample: bytes, at_start: bool, final: bool) -> str:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final)
    except UnicodeDecodeError:
        return "gb18030"
    return "utf-8-sig" if at_start else "utf-8"


def decoded(chunks: Iterable[bytes], what: str) -> Iterator[str]:
    """Text from byte chunks, decided as the whole file would be: UTF-8 (a BOM dropped) if valid, else GB18030
    (a superset of GBK). The decision is taken on the first ``SNIFF`` bytes from the first non-ASCII one (the
    whole file when shorter): a GBK file whose first 64 KiB of text is valid UTF-8 does not occur, while trying
    GB18030 first would take UTF-8 bytes for mojibake. Bytes past that point that are not valid in the chosen
    encoding fail the batch."""
    decoder: codecs.IncrementalDecoder | None = None
    encoding = ""
    at_start = True
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        if decoder is None:
            if not pending and chunk.isascii():
                yield chunk.decode("ascii")
                at_start = False
                continue
            pending.append(chunk)
            size += len(chunk)
            if size < SNIFF:
                continue
            chunk = b"".join(pending)
            pending = []
            encoding = _encoding_of(chunk, at_start, final=False)
            decoder = codecs.getincrementaldecoder(encoding)()
        yield _decode(decoder, chunk, encoding, what)
    if decoder is None:
        if not pending:
            return
        sample = b"".join(pending)
        encoding = _encoding_of(sample, at_start, final=True)
        decoder = codecs.getincrementaldecoder(encoding)()
        yield _decode(decoder, sample, encoding, what)
    try:
        yield decoder.decode(b"", True)
    except UnicodeDecodeError:
        raise StatementError(f"{what}: the file ends inside a character: it may be cut short") from None


def _decode(decoder: codecs.IncrementalDecoder, chunk: bytes, encoding: str, what: str) -> str:
    try:
        return decoder.decode(chunk, False)
    except UnicodeDecodeError as exc:
        raise StatementError(f"{what}: not valid {encoding.removesuffix('-sig')} text ({exc.reason})") from None


def lines(texts: Iterable[str], what: str) -> Iterator[str]:
    """The lines of a text given in pieces, without their line ends, exactly as ``str.splitlines`` would give
    them for the whole text (a ``\\r\\n`` split across two pieces is one line end). A line longer than
    ``MAX_LINE`` characters fails the batch: no statement has one, and holding it would undo the streaming."""
    held = ""
    for piece in texts:
        if not piece:
            continue
        buf = held + piece
        trail = ""
        if buf[-1] == "\r":  # maybe the first half of \r\n: decide with the next piece
            buf, trail = buf[:-1], "\r"
        parts = buf.splitlines()
        held = parts.pop() + trail if buf and buf[-1] not in LINE_BREAKS else trail
        if len(held) > MAX_LINE:
            raise StatementError(f"{what}: a line longer than {MAX_LINE} characters: not a statement")
        yield from parts
    if held:
        yield held[:-1] if held[-1] == "\r" else held


def text_lines(data: bytes | str, what: str) -> Iterator[str]:
    """A plain or gzipped statement as lines; a ``str`` is taken as already decoded."""
    if isinstance(data, str):
        return iter(data.splitlines())
    return lines(decoded(gunzipped(data, what), what), what)


def open_zip(data: bytes, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise StatementError(f"{what}: not a sound zip: {exc}") from None


def zip_name(info: zipfile.ZipInfo) -> str:
    """Real statements name their CSVs in GBK without the UTF-8 flag; Python reads those names as cp437."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("gbk")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def zip_lines(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> Iterator[str]:
    return lines(decoded(zip_member(archive, info, what), what), what)
