from __future__ import annotations

from collections.abc import Callable

import pytest

from patronus.core.errors import ConfigError
from patronus.core.units import format_duration, parse_duration, parse_rate, parse_ratio, parse_size

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "seconds"), [("20ms", 0.02), ("1s", 1.0), ("1.5s", 1.5), ("250us", 250e-6),
                                                ("2m", 120.0), (3, 3.0), ("0.5", 0.5), (" 10 ms ", 0.01)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "bps"), [("100mbit", 1e8), ("1gbit", 1e9), ("64kbit", 64e3), (1000, 1000.0),
                                           ("10Mbps", 1e7)])
def test_rates(text: object, bps: float) -> None:
    assert parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize(("text", "ratio"), [("1%", 0.01), ("0.5%", 0.005), (0.2, 0.2), ("100%", 1.0), (0, 0.0)])
def test_ratios(text: object, ratio: float) -> None:
    assert parse_ratio(text) == pytest.approx(ratio)


def test_sizes() -> None:
    assert parse_size("1500") == 1500
    assert parse_size("64k") == 65536


@pytest.mark.parametrize(("fn", "value"), [(parse_duration, "fast"), (parse_duration, "10 parsecs"),
                                           (parse_duration, True), (parse_duration, float("nan")),
                                           (parse_rate, "lots"), (parse_rate, "10 furlongs"),
                                           (parse_ratio, "150%"), (parse_ratio, "-1%"), (parse_ratio, 2),
                                           (parse_size, "big")])
def test_bad_values_name_the_field(fn: object, value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        fn(value, "sites.hq.uplinks.isp1.delay")  # type: ignore[operator]
    assert exc.value.errors[0][0] == "sites.hq.uplinks.isp1.delay"
    assert "sites.hq.uplinks.isp1.delay: expected" in str(exc.value)


def test_format_duration() -> None:
    assert format_duration(0.02) == "20ms"
    assert format_duration(2.0) == "2s"
    assert format_duration(5e-5) == "50us"


@pytest.mark.parametrize(("parse", "text"), [
    (parse_duration, "1e400"), (parse_duration, "1e400ms"), (parse_duration, "1e308h"),
    (parse_rate, "1e400"), (parse_rate, "1e307tbit"), (parse_size, "1e400"), (parse_size, "1e308gib"),
    (parse_ratio, "1e400%"),
])
def test_numbers_that_overflow_are_refused_with_the_field(parse: Callable[..., object], text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(text, "links.isp1.delay")
    assert "links.isp1.delay" in str(exc.value)
