"""The hardware catalog: every price dated and sourced, the seed figures present, user files laid
over the built-in one, and a price never guessed."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossinfer.errors import CatalogError
from crossinfer.hardware.catalog import load_catalog, resolve_price


def test_every_instance_price_has_a_date_and_a_source() -> None:
    catalog = load_catalog()
    assert len(catalog.instances) >= 10
    for instance in catalog.instances:
        assert instance.price_per_hour > 0, instance.name
        assert instance.price_date[:4].isdigit(), instance.name
        assert instance.source.startswith("https://"), instance.name
    names = {i.name for i in catalog.instances}
    assert {"c7i.large", "c7a.large", "m7i.large", "c3-standard-4", "n2-standard-2"} <= names
    gpus = {i.gpu for i in catalog.instances if i.gpus}
    assert {"NVIDIA H100 SXM", "NVIDIA H200 SXM"} <= gpus


def test_device_figures_follow_the_reference_sheet() -> None:
    catalog = load_catalog()
    h100 = next(d for d in catalog.devices if d.name == "NVIDIA H100 SXM")
    h200 = next(d for d in catalog.devices if d.name == "NVIDIA H200 SXM")
    assert h100.peak_tflops["fp16"] == 989.0 and h100.peak_tflops["int8"] == 1979.0
    assert h100.memory_bandwidth_gbs == 3350 and h200.memory_bandwidth_gbs == 4800
    assert h200.memory_gb == 141 and h100.power_w == 700
    groq = next(d for d in catalog.devices if d.name.startswith("Groq"))
    assert groq.unconfirmed  # REFERENCE.md calls its source unconfirmed
    assert catalog.device_for("NVIDIA H100 80GB HBM3") == h100
    assert catalog.device_for("Some Other GPU") is None


def test_price_is_never_guessed() -> None:
    catalog = load_catalog()
    assert resolve_price(catalog, instance=None, price_per_hour=None) is None
    price = resolve_price(catalog, instance="C7A.LARGE", price_per_hour=None)
    assert price is not None and price.per_hour == pytest.approx(0.10264)
    assert "c7a.large" in price.source and "2024-06" in price.source
    given = resolve_price(catalog, instance="c7a.large", price_per_hour=0.5)
    assert given is not None and given.per_hour == 0.5 and "wins" in given.source
    with pytest.raises(CatalogError, match=r"instance 'x9\.huge' is not in the hardware catalog"):
        resolve_price(catalog, instance="x9.huge", price_per_hour=None)
    with pytest.raises(CatalogError, match="must be positive"):
        resolve_price(catalog, instance=None, price_per_hour=0.0)


def test_a_user_catalog_replaces_entries_by_name_and_adds_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        """
[[instance]]
name = "c7a.large"
provider = "aws"
region = "eu-west-1"
price_per_hour = 0.2
price_date = "2026-11-01"
source = "our invoice"

[[instance]]
name = "on-prem-box"
provider = "self"
price_per_hour = 0.05
price_date = "2026-11-01"
source = "amortised purchase price"
"""
    )
    catalog = load_catalog(path)
    assert catalog.instance("c7a.large").price_per_hour == 0.2
    assert catalog.instance("on-prem-box").provider == "self"
    assert catalog.instance("c7i.large").price_per_hour > 0  # the built-in entries stay


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[instance]]\nname = 'x'\nprovider = 'p'\nprice_per_hour = 1.0\n", "price_date"),
        ("not toml = = 1", "not valid TOML"),
        ("catalog_version = 9\n", "catalog_version 9"),
        ("[[gpu]]\nname = 'x'\n", "unknown top-level key"),
        (
            "[[instance]]\nname='x'\nprovider='p'\nprice_per_hour='cheap'\nprice_date='2026'\nsource='s'\n",
            "price_per_hour must be a number",
        ),
        # strict: an unknown key is refused with the nearest name, nothing is coerced with str()
        (
            "[[instance]]\nname='x'\nprovider='p'\nprise_per_hour=1.0\nprice_date='2026'\nsource='s'\n",
            r"\[instance #1 \(x\)\] unknown key 'prise_per_hour': did you mean 'price_per_hour'\?",
        ),
        (
            "[[device]]\nname = 3\nkind = 'gpu'\nsource = 's'\n",
            r"device #1.name must be a non-empty string, got 3",
        ),
        ("[[device]]\nname = 'x'\nkind = 'gpus'\nsource = 's'\n", "kind 'gpus' is not one of"),
        (
            "[[device]]\nname = 'x'\nkind = 'gpu'\nsource = 's'\nunconfirmed = 'no'\n",
            "unconfirmed must be true or false, got 'no'",
        ),
        (
            "[[device]]\nname = 'x'\nkind = 'gpu'\nsource = 's'\nmatch = 'H1'\n",
            "match must be a list",
        ),
        ("device = 3\n", "device must be an array of tables"),
    ],
)
def test_bad_catalog_files_are_refused_naming_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)


def test_an_unquoted_price_date_is_read_as_its_text(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        "[[instance]]\nname = 'box'\nprovider = 'self'\nprice_per_hour = 0.5\n"
        "price_date = 2026-11-01\nsource = 'invoice'\n"
    )
    assert load_catalog(path).instance("box").price_date == "2026-11-01"


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot be read"):
        load_catalog(tmp_path / "nope.toml")
