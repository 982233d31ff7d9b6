"""A site's failure as recorded by the coordinator (server/recorder.py): the site's own words,
without the wrapping Flower adds in simulation or on a SuperNode."""

from __future__ import annotations

import pytest

from server.recorder import _unwrapped

pytestmark = pytest.mark.unit


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


def test_a_rounds_train_summary_carries_the_largest_site_epsilon() -> None:
    """Two sites under local DP report cumulative epsilons 0.8 (weight 300) and 2.5 (weight 100):
    the round line's ``train`` aggregate says epsilon 2.5, the worst site's, not the weighted mean
    1.225; each site's own value stays under ``privacy.sites``."""
    from server.recorder import RoundRecorder

    recorder = RoundRecorder(None)
    recorder.begin(1, bytes_down=0)
    recorder.site_trained("site-0", {"weight": 300.0, "epsilon": 0.8, "delta": 1e-5, "loss": 1.0}, bytes_up=1)
    recorder.site_trained("site-1", {"weight": 100.0, "epsilon": 2.5, "delta": 1e-5, "loss": 2.0}, bytes_up=1)
    line = recorder.close(central=None)
    assert line["train"]["epsilon"] == 2.5 and line["train"]["delta"] == 1e-5
    assert line["train"]["loss"] == pytest.approx(1.25)  # metrics other than privacy: weighted mean
    assert {n: v["epsilon"] for n, v in line["privacy"]["sites"].items()} == {"site-0": 0.8, "site-1": 2.5}
