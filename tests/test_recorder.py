"""A site's failure as recorded by the coordinator (server/recorder.py): the site's own words,
without the wrapping Flower adds in simulation or on a SuperNode."""

from __future__ import annotations

import pytest

from server.recorder import _unwrapped


@pytest.mark.parametrize(
    "forwarded",
    [
        "\nException ClientAppException occurred. Message: site 'h1' [data-error]: a check failed'>",
        "<class 'client.public_errors.SiteFailure'>:<'site 'h1' [data-error]: a check failed'>",
        "site 'h1' [data-error]: a check failed",
    ],
)
def test_flowers_wrapping_is_removed(forwarded: str) -> None:
    assert _unwrapped(forwarded) == "site 'h1' [data-error]: a check failed"
