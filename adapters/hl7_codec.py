"""HL7 v2 bytes ↔ text: the message's character set (MSH-18), decoded before any field is split.

In GB18030 the second byte of a Chinese character may be 0x7C ``|``, 0x5E ``^``, 0x5C ``\\`` or 0x7E ``~``
(亅 is 0x81 0x7C), so splitting undecoded bytes on the HL7 separators cuts characters in half and shifts
fields. A message is therefore decoded whole, by the character set MSH-18 names (HL7 table 0211) or, when MSH-18
is empty, by the peer's configured default, and only then parsed.

MSH-18 itself has to be found on bytes. The separators and MSH-18 are ASCII, so a byte-wise split of the MSH
segment finds it, unless an earlier MSH field (a facility name in Chinese) holds a character whose trail byte
looks like ``|``. The byte-wise reading is therefore only a candidate: the MSH segment is decoded with it and must
name the same character set again; if not, the peer default and any table 0211 name among the later MSH fields
(MSH-18 shifted by a split character) are tried the same way. Character sets that are not
ASCII-compatible (UTF-16, UTF-32) are refused, because MLLP framing and the separators would not survive them.
"""

from __future__ import annotations

import codecs
import functools
import re

CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
}
"""HL7 table 0211 names → Python codecs. Other names are looked up as codec names (``GBK``, ``UTF-8``), which
many Chinese HIS put in MSH-18 although the table does not list them."""

_HL7_NAMES = {codec: name for name, codec in CHARSETS.items()}
_PROBE = "MSH|^~\\&\r\n0123456789"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class CharsetError(ValueError):
    """A character set name that is unknown or cannot carry HL7 framing."""


class UndecodableMessage(ValueError):
    """The bytes are not valid in the message's character set (or no MSH segment could be found)."""

    def __init__(self, message: str, charset: str | None = None) -> None:
        super().__init__(message)
        self.charset = charset


@functools.lru_cache(maxsize=128)
def codec_for(name: str) -> str:
    """The Python codec for an MSH-18 value or a configured encoding name; raises :class:`CharsetError`.

    Cached: every message sent and every reply read asks it (with the codec lookup and the ASCII probe), and
    the answer for a name never changes; failures are not cached, and a peer can only send so many names."""
    label = name.strip()
    codec = CHARSETS.get(label.upper())
    if codec is None:
        try:
            codec = codecs.lookup(label).name
        except LookupError:
            raise CharsetError(
                f"unknown character set {name!r} (HL7 table 0211 names such as ASCII, 8859/1, UNICODE UTF-8, "
                "GB 18030-2000, or a codec name such as GBK)"
            ) from None
    try:
        compatible = _PROBE.encode(codec) == _PROBE.encode("ascii")
    except (LookupError, UnicodeError):
        compatible = False
    if not compatible:
        raise CharsetError(f"character set {name!r} is not ASCII-compatible; HL7 over MLLP cannot carry it")
    return codecs.lookup(codec).name


def hl7_name(codec: str) -> str | None:
    """The table 0211 name of a codec, for MSH-18 (``gb18030`` → ``GB 18030-2000``)."""
    return _HL7_NAMES.get(codecs.lookup(codec).name)


def _msh(data: bytes) -> bytes:
    start = data.lstrip(b" \t\r\n")
    if not start.startswith(b"MSH") or len(start) < 8:
        raise UndecodableMessage("not an HL7 message: it does not start with an MSH segment")
    end = min((i for i in (start.find(b"\r"), start.find(b"\n")) if i >= 0), default=len(start))
    return start[:end]


def declared_charset(msh: str) -> str | None:
    """MSH-18 (its first repetition) of a decoded MSH segment; ``None`` when empty."""
    if len(msh) < 8 or not msh.startswith("MSH"):
        return None
    separator, encoding_chars = msh[3], msh[4:8]
    fields = msh.split(separator)
    if len(fields) < 18:
        return None
    value = fields[17].split(encoding_chars[1])[0].split(encoding_chars[0])[0].strip()
    return value or None


def detect(data: bytes, default: str) -> tuple[str, str | None]:
    """The codec to decode ``data`` with and the MSH-18 value that chose it (``None``: the peer default)."""
    msh = _msh(data)
    default_codec = codec_for(default)
    bytewise = msh.decode("latin-1")
    naive = declared_charset(bytewise)
    names = [naive] if naive is not None else []
    names.append(default)
    names += [field for field in bytewise.split(bytewise[3])[12:] if field.strip().upper() in CHARSETS]
    candidates: list[str] = []
    for name in names:
        try:
            candidates.append(codec_for(name))
        except CharsetError:
            pass
    problem = None
    for codec in dict.fromkeys(candidates):
        try:
            declared = declared_charset(msh.decode(codec))
        except UnicodeDecodeError:
            continue
        if declared is None:
            if codec == default_codec:
                return codec, None
            continue
        try:
            if codec_for(declared) == codec:
                return codec, declared
        except CharsetError as exc:
            problem = str(exc)
    if problem is not None:
        raise UndecodableMessage(f"MSH-18: {problem}", naive)
    raise UndecodableMessage(
        f"cannot read MSH-18 of the MSH segment as {naive or default}: the bytes are not valid in it", naive or default
    )


def decode(data: bytes, default: str) -> tuple[str, str, str | None]:
    """Decode a whole message: ``(text with CR segment ends, codec, MSH-18 or None)``.

    LF and CRLF segment ends are read as CR and a missing final CR is added, as many HIS send them.
    """
    codec, declared = detect(data, default)
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.end].hex(" ").upper()
        source = f"MSH-18 {declared!r}" if declared else "the peer's default, MSH-18 being empty"
        raise UndecodableMessage(
            f"the message is not valid {codec} ({source}): bytes {bad} at offset {exc.start}", declared or codec
        ) from None
    return normalize(text), codec, declared


def normalize(text: str) -> str:
    """One CR after every segment; blank lines and surrounding whitespace dropped."""
    segments = [line for line in _LINE_BREAK.split(text.strip()) if line.strip()]
    return "\r".join(segments) + "\r"
