"""One reading of an inference request: what the HTTP guard checks is exactly what tritonserver reads.

Python's ``json`` keeps the *last* of two equal keys, tritonserver's parser the *first*; Python also takes
``NaN`` / ``Infinity`` and integers of any size. So the guard parses strictly (:func:`strict_loads`: a duplicate key
at any depth, or a non-standard constant, is a 400), checks every input's data against its declared shape and
datatype (:func:`check_data`), and forwards its own canonical re-serialisation (:func:`canonical`), never the
client's bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any, List, Tuple

_INT_RANGE = {"INT8": (-(1 << 7), (1 << 7) - 1), "INT16": (-(1 << 15), (1 << 15) - 1),
              "INT32": (-(1 << 31), (1 << 31) - 1), "INT64": (-(1 << 63), (1 << 63) - 1),
              "UINT8": (0, (1 << 8) - 1), "UINT16": (0, (1 << 16) - 1), "UINT32": (0, (1 << 32) - 1),
              "UINT64": (0, (1 << 64) - 1)}
_FLOATS = ("FP16", "BF16", "FP32", "FP64")


class BadRequest(ValueError):
    """A request the server must not read: the message is the one-line answer (HTTP 400)."""


def _pairs(pairs: List[Tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise BadRequest(f"the request's JSON has the key {k!r} twice in one object; send each key once")
        out[k] = v
    return out


def _constant(name: str):
    raise BadRequest(f"the request's JSON holds {name}, which is not JSON; send finite numbers")


def strict_loads(data: bytes) -> Any:
    """``json.loads`` that refuses duplicate keys (at any depth) and NaN / Infinity (:class:`BadRequest`)."""
    try:
        return json.loads(data, object_pairs_hook=_pairs, parse_constant=_constant)
    except BadRequest:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly nested arrays
        raise BadRequest("the request header is not valid JSON") from None


def canonical(header: Any) -> bytes:
    """The guard's own serialisation of what it checked (ASCII, no NaN: nothing another parser reads otherwise)."""
    try:
        return json.dumps(header, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    except ValueError:  # 1e400 reads as inf: not a number any input can hold
        raise BadRequest("the request's JSON holds a number out of range (it overflows a double)") from None


def _count_and_check(data: Any, datatype: str, name: str) -> int:
    """Elements in ``data`` (nested lists allowed), each of the kind ``datatype`` holds."""
    lo_hi = _INT_RANGE.get(datatype)
    n, stack = 0, [data]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
            continue
        n += 1
        if datatype == "BOOL":
            ok = isinstance(v, bool)
        elif lo_hi is not None:
            ok = isinstance(v, int) and not isinstance(v, bool) and lo_hi[0] <= v <= lo_hi[1]
        elif datatype in _FLOATS:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        else:
            ok = True
        if not ok:
            what = f"an integer in [{lo_hi[0]}, {lo_hi[1]}]" if lo_hi else ("true or false" if datatype == "BOOL"
                                                                              else "a number")
            shown = json.dumps(v)[:40] if not isinstance(v, (dict,)) else "an object"
            raise BadRequest(f"input {name!r} ({datatype}) holds {shown}; every element must be {what}")
    return n


def check_data(header: dict, binary_bytes: int, itemsize: dict) -> None:
    """Every input: dimensions of at least 1, a known datatype, and data (JSON or binary) that fills its shape
    exactly. ``binary_bytes``: the bytes after the JSON header (binary tensor data)."""
    binary_total = 0
    for inp in header["inputs"]:
        name, shape = inp["name"], inp["shape"]
        if any(d == 0 for d in shape):
            raise BadRequest(f"input {name!r} has an empty dimension in shape {shape}; every dimension must be at "
                             "least 1")
        datatype = inp.get("datatype")
        if not isinstance(datatype, str) or datatype not in itemsize:
            raise BadRequest(f"input {name!r} has datatype {json.dumps(datatype)[:40]}; expected one of "
                             f"{', '.join(sorted(itemsize))}")
        n = 1
        for d in shape:
            n *= d
        params = inp.get("parameters")
        params = params if isinstance(params, dict) else {}
        if "shared_memory_region" in params:  # tritonserver checks the region's registered size itself
            continue
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size != n * itemsize[datatype]:
                raise BadRequest(f"input {name!r}: binary_data_size {json.dumps(size)[:40]} does not match shape "
                                 f"{shape} of {datatype} ({n * itemsize[datatype]} bytes)")
            if "data" in inp:
                raise BadRequest(f"input {name!r} has both JSON data and binary data")
            binary_total += size
            continue
        if "data" not in inp:
            raise BadRequest(f"input {name!r} has no data")
        got = _count_and_check(inp["data"], datatype, name)
        if got != n:
            raise BadRequest(f"input {name!r} has {got} data elements; its shape {shape} needs {n}")
    if binary_total != binary_bytes:
        raise BadRequest(f"the request carries {binary_bytes} bytes of binary data; its inputs declare "
                         f"{binary_total}")
