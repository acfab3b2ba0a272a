"""Libraries that log the data they handle say nothing below INFO, whatever the level."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import hpack
import pytest

from app.logs import install_redaction

DEVICE_TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"


@pytest.fixture
def hpack_as_shipped() -> Iterator[None]:
    """hpack's loggers at their own default level: aioapns, when imported, silences them
    as a side effect, and nothing here may count on that."""
    names = ("hpack", "hpack.hpack", "hpack.table")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_hpack_at_debug_logs_no_device_token(
    hpack_as_shipped: None, caplog: pytest.LogCaptureFixture
) -> None:
    install_redaction()
    caplog.set_level(logging.DEBUG)
    assert logging.getLogger("hpack.hpack").isEnabledFor(logging.DEBUG)  # it would log

    # An APNs request's headers, as aioapns hands them to h2, through a small table so
    # entries are evicted (hpack.table logs those) as well as encoded and decoded.
    headers = [(":method", "POST"), (":path", f"/3/device/{DEVICE_TOKEN}")]
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    encoder.header_table_size = 64
    for n in range(3):
        block = encoder.encode([*headers, ("apns-id", f"id-{n}")])
        assert (":path", f"/3/device/{DEVICE_TOKEN}") in decoder.decode(block)
    logging.getLogger(__name__).debug("after the headers")  # DEBUG is captured

    assert [r.getMessage() for r in caplog.records] == ["after the headers"]
    assert DEVICE_TOKEN not in caplog.text
