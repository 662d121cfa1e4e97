"""Shared by the garbage tests: whatever the bytes, the decoders answer or raise RecordError."""
from __future__ import annotations

import re

from streams.contract import RecordError, decode, decode_request
from streams.contract.catalog import RECORD_NAMES


def decoded_as(data: bytes) -> int:
    """How many record types `data` decodes as; any failure must be a RecordError with a reason."""
    decoded = 0
    for name in RECORD_NAMES:
        try:
            decode(name, data)
            decoded += 1
        except RecordError as error:
            assert error.reason
    try:
        decode_request(data)
    except RecordError as error:
        assert error.reason
        assert error.request_id is None or re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", error.request_id)
    return decoded
