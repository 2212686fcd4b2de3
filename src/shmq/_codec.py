"""The one wire format of message bodies (payload kinds, pickling, out-of-band framing) and of header blocks.

Described with diagrams in docs/internals/codec.md. The binding calls encode() for every body
that is not exactly bytes and decode() for every body that is not a plain copy; the kinds it
copies itself (KIND_BYTES, KIND_BYTEARRAY) are registered with it below.
"""
import collections
import collections.abc
import copyreg
import pickle
import struct
from io import BytesIO as _BytesIO

from multiprocessing import reduction as _reduction

from . import _core
from .errors import ArgumentError, ArgumentTypeError, CorruptQueueError

__all__ = ["KIND_BYTES", "KIND_BYTEARRAY", "KIND_PICKLE", "KIND_PICKLE_OOB", "KIND_NAMES", "encode", "decode",
           "encode_headers", "decode_headers"]

# Payload kinds: the descriptor's kind byte (csrc/desc.h stores it, never interprets it).
KIND_BYTES = 1        # exactly the bytes given (bytes, memoryview, any bytes-like on a raw queue)
KIND_BYTEARRAY = 2    # the same, delivered as a bytearray
KIND_PICKLE = 3       # one pickle stream (protocol 5, or 4 for read-only out-of-band buffers)
KIND_PICKLE_OOB = 4   # a pickle stream and its out-of-band buffers, framed as below
KIND_NAMES = {KIND_BYTES: "bytes", KIND_BYTEARRAY: "bytearray", KIND_PICKLE: "pickle", KIND_PICKLE_OOB: "pickle+oob"}

# Out-of-band framing: u64 n | u64 stream_len | u64 buf_len x n | pad | stream | pad | buf_1 | pad ... buf_n
# (little-endian; each piece starts at a multiple of OOB_ALIGN bytes from the payload start, so
# numpy arrays land aligned in shared memory).
OOB_ALIGN = 64
_U64 = struct.Struct("<Q")
_ZEROS = memoryview(bytes(OOB_ALIGN))


class _Pickler(pickle.Pickler):
    # A live view of what ForkingPickler would use (its registered reducers first), without
    # ForkingPickler's per-instance copy of the whole dispatch table.
    dispatch_table = collections.ChainMap(_reduction.ForkingPickler._extra_reducers, copyreg.dispatch_table)


class _ReadOnlyBuffer(Exception):
    """A read-only out-of-band buffer: pickle would mark it read-only and the receiver would get
    a read-only object (a numpy array with writeable=False), where multiprocessing (protocol 4,
    in-band) delivers a writable copy. Such an object is pickled again with protocol 4."""


def _out_of_band_into(buffers):
    def out_of_band(pb):
        try:
            readonly = pb.raw().readonly
        except BufferError:
            return True  # not contiguous: pickle copies it in-band
        if readonly:
            raise _ReadOnlyBuffer()
        buffers.append(pb)
        return False  # False: out of band
    return out_of_band


class _Sink:
    """The pickler's file: its write is a list's append. The C pickler writes its buffer once per
    dump as a bytes object (no copy), and a large in-band bytes-like object as that object
    itself: the pieces go to the binding, which writes them back to back into shared memory."""
    __slots__ = ("write",)


def new_pickler():
    """(pickler, pieces, buffers): a pickler to reuse for many messages (building a pickler and a
    BytesIO per message cost ~0.4 us, more than pickling a small dict). Its file is a _Sink
    appending to pieces; its out-of-band buffers go to buffers. Whoever dumps with it clears its
    memo afterwards (the memo holds references to what was pickled), empties both lists, and
    reuses it only after a dump that succeeded: a failed dump may leave its framing state behind.
    One pickling at a time per pickler: threads, and a __reduce__ that itself puts to a queue,
    each take their own (the binding keeps a small pool of them)."""
    pieces = []
    buffers = []
    sink = _Sink()
    sink.write = pieces.append
    # buffer_callback positionally: Python 3.11's C pickler rejects it as a keyword
    return _Pickler(sink, 5, True, _out_of_band_into(buffers)), pieces, buffers


_POOL = []              # idle new_pickler() triples of encode() (list.pop/append: atomic under the GIL)
_POOL_MAX = 8


def _pickle(obj):
    """(pickle stream as a list of pieces written back to back, out-of-band PickleBuffers)."""
    r = _POOL.pop() if _POOL else new_pickler()
    pickler, out, bufs = r
    try:
        pickler.dump(obj)
    except _ReadOnlyBuffer:
        stream, buffers = _pickle_slow(obj)
        return [stream], buffers
    finally:
        pickler.clear_memo()   # the memo holds references to what was pickled
    pieces = out[:]
    out.clear()
    buffers = bufs[:]
    bufs.clear()
    if len(_POOL) < _POOL_MAX:
        _POOL.append(r)
    return pieces, buffers


def _pickle_slow(obj):
    """_pickle's first way, step by step (fresh picklers): an object with a read-only
    out-of-band buffer goes again with protocol 4."""
    f = _BytesIO()
    buffers = []
    try:
        # buffer_callback positionally: Python 3.11's C pickler rejects it as a keyword
        _Pickler(f, 5, True, _out_of_band_into(buffers)).dump(obj)
    except _ReadOnlyBuffer:
        f = _BytesIO()
        buffers = []
        try:
            _Pickler(f, 4).dump(obj)
        except pickle.PicklingError:
            # protocol 4 cannot carry a PickleBuffer: protocol 5 with every buffer in-band
            f = _BytesIO()
            _Pickler(f, 5).dump(obj)
    return f.getbuffer(), buffers


loads = pickle.loads  # a plain pickle body (KIND_PICKLE) decodes with this, also straight from the binding


def _pad(off):
    return (OOB_ALIGN - off % OOB_ALIGN) % OOB_ALIGN


def encode(obj, raw):
    """(kind, parts) of a body: parts are buffers the binding writes back to back. raw: the
    queue carries bytes-like bodies only (TypeError otherwise)."""
    # (the binding sends exact bytes itself, as KIND_BYTES, without calling this)
    if isinstance(obj, (bytes, bytearray, memoryview)) and (raw or type(obj) in (bytes, bytearray, memoryview)):
        if isinstance(obj, memoryview) and not obj.contiguous:
            obj = obj.tobytes()
        return (KIND_BYTEARRAY if isinstance(obj, bytearray) else KIND_BYTES), [obj]
    if raw:
        raise ArgumentTypeError(f"raw queues carry bytes-like bodies only, not {type(obj).__name__}")
    pieces, buffers = _pickle(obj)
    if not buffers:
        return KIND_PICKLE, pieces
    return encode_oob(pieces, buffers)


ReadOnlyBuffer = _ReadOnlyBuffer   # what a new_pickler() dump raises when encode() must do the object itself


def encode_oob(pieces, buffers):
    """(KIND_PICKLE_OOB, parts) of a pickle stream (pieces) and its out-of-band PickleBuffers."""
    stream = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    raws = [b.raw() for b in buffers]   # contiguous views (checked by the buffer callback)
    lens = [len(stream)] + [r.nbytes for r in raws]
    header = _U64.pack(len(buffers)) + b"".join(_U64.pack(n) for n in lens)
    parts = [header]
    off = len(header)
    for piece in [stream] + raws:
        pad = _pad(off)
        if pad:
            parts.append(_ZEROS[:pad])
            off += pad
        parts.append(piece)
        off += len(piece) if piece is stream else piece.nbytes
    return KIND_PICKLE_OOB, parts


def decode(kind, view, raw, msg_id):
    """The object of a body of this kind. view: the payload (in shared memory, valid only
    during the call: nothing returned may keep it). untrusted: every length is checked."""
    if kind == KIND_BYTES:
        return bytes(view)
    if kind == KIND_BYTEARRAY:
        return _core.copy_bytearray(view)
    if kind in (KIND_PICKLE, KIND_PICKLE_OOB) and raw:
        raise CorruptQueueError(f"message {msg_id} on a raw queue is pickled: refusing to unpickle "
                                "(raw queues carry bytes only)")
    if kind == KIND_PICKLE:
        return pickle.loads(view)
    if kind == KIND_PICKLE_OOB:
        return _decode_oob(view)
    raise CorruptQueueError(f"message {msg_id} has an unknown payload kind {kind}")


def decode_view(kind, view, raw, msg_id):
    """decode() for get(copy=False): view is a read-only memoryview of the pinned message; what
    is returned may keep slices of it (the message stays taken until the last one is released).
    bytes and bytearray bodies: the view itself; out-of-band buffers: read-only slices; a plain
    pickle has nothing to view and is decoded from the view (released at once)."""
    if kind == KIND_BYTES or kind == KIND_BYTEARRAY:
        return view
    if kind in (KIND_PICKLE, KIND_PICKLE_OOB) and raw:
        view.release()
        raise CorruptQueueError(f"message {msg_id} on a raw queue is pickled: refusing to unpickle "
                                "(raw queues carry bytes only)")
    if kind == KIND_PICKLE:
        try:
            return pickle.loads(view)
        finally:
            view.release()
    if kind == KIND_PICKLE_OOB:
        return _decode_oob(view, copy=False)
    view.release()
    raise CorruptQueueError(f"message {msg_id} has an unknown payload kind {kind}")


def _decode_oob(view, copy=True):
    size = len(view)
    if size < 16:
        raise CorruptQueueError("out-of-band message shorter than its header")
    (nbuf,) = _U64.unpack_from(view, 0)
    if nbuf > (size - 16) // 8:
        raise CorruptQueueError("out-of-band message with an impossible buffer count")
    lens = [_U64.unpack_from(view, 8 + 8 * i)[0] for i in range(nbuf + 1)]
    off = 8 + 8 * (nbuf + 1)
    pieces = []
    for i, n in enumerate(lens):
        off += _pad(off)
        if n > size or off > size - n:
            raise CorruptQueueError("out-of-band message with a buffer outside the payload")
        piece = view[off:off + n]
        if copy:
            # the stream is read once by pickle; buffers become the objects' memory: copies
            pieces.append(bytes(piece) if i == 0 else _core.copy_bytearray(piece))
            piece.release()
        else:
            pieces.append(piece)      # zero-copy: the objects' memory is the pinned message
        off += n
    return pickle.loads(pieces[0], buffers=pieces[1:])


# Header block (at-least-once messages; csrc/lease.h and the dead-letter move write the same):
# entries of  u16 key_len | u8 type (0 str, 1 bytes) | u8 0 | u32 value_len | key | value
_ENT = struct.Struct("<HBxI")
_STR, _BYTES = 0, 1


def encode_headers(headers):
    """The header block of a send. Raises TypeError for keys that are not str or values that
    are neither str nor bytes-like, ValueError when it is too large."""
    if not headers:
        return b""
    if not isinstance(headers, collections.abc.Mapping):
        raise ArgumentTypeError(f"headers must be a dict (a mapping) of str to str/bytes, not {type(headers).__name__}")
    parts = []
    for k, v in headers.items():
        if not isinstance(k, str):
            raise ArgumentTypeError(f"header names must be str, not {type(k).__name__}")
        kb = k.encode()
        if isinstance(v, str):
            t, vb = _STR, v.encode()
        elif isinstance(v, (bytes, bytearray, memoryview)):
            t, vb = _BYTES, bytes(v)
        else:
            raise ArgumentTypeError(f"header {k!r}: values must be str or bytes, not {type(v).__name__}")
        if len(kb) > 0xFFFF:
            raise ArgumentError(f"header name of {len(kb)} bytes is too long (at most 65535)")
        parts.append(_ENT.pack(len(kb), t, len(vb)) + kb + vb)
    block = b"".join(parts)
    if len(block) > _core.HDR_MAX:
        raise ArgumentError(f"headers take {len(block)} bytes encoded; at most {_core.HDR_MAX} fit")
    return block


def decode_headers(block):
    """dict of a header block. untrusted: every length is checked against the block."""
    out = {}
    off, n = 0, len(block)
    while off < n:
        if n - off < _ENT.size:
            raise CorruptQueueError("header block ends inside an entry")
        kl, t, vl = _ENT.unpack_from(block, off)
        off += _ENT.size
        if kl > n - off or vl > n - off - kl or t not in (_STR, _BYTES):
            raise CorruptQueueError("header entry outside its block")
        k = bytes(block[off:off + kl]).decode(errors="replace")
        v = bytes(block[off + kl:off + kl + vl])
        out[k] = v.decode(errors="replace") if t == _STR else v
        off += kl + vl
    return out
