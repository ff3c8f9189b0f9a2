"""Tables keyed by a schema enum's values are checked against the schema at start-up: a value
added to the enum (a new aggregation, hold status or pricing model) without its entry would
pass validation and then fail at request time."""
from __future__ import annotations

import dataclasses

import pytest

from zapbilling.app import create_app
from zapbilling.billing import ENUM_TABLES
from zapbilling.config import Config
from zapbilling.registry import RegistryError, check_enum_tables, load_registry
from zapbilling.store import SqliteStore

pytestmark = pytest.mark.sqlite_only("start-up checks of tables; no store")

REGISTRY = load_registry()
SCHEMA = REGISTRY.schema


def test_the_service_tables_match_the_schema():
    check_enum_tables(SCHEMA, ENUM_TABLES, "billing/")
    check_enum_tables(SCHEMA, {"AggregationType": SqliteStore.AGGREGATIONS, "HoldStatus": SqliteStore.HOLD_STATUSES}, "the store")
    assert set(SqliteStore.AGGREGATIONS) == set(SCHEMA.enums["AggregationType"].values)


@pytest.mark.parametrize("enum", ["AggregationType", "HoldStatus", "PricingModel"])
def test_a_value_missing_from_a_table_stops_the_start(enum):
    values = list(SCHEMA.enums[enum].values)
    with pytest.raises(RegistryError, match=f"table of {enum} does not match the schema: missing \\['{values[-1]}'\\]"):
        check_enum_tables(SCHEMA, {enum: values[:-1]}, "the store")


def test_a_key_the_enum_does_not_have_stops_the_start():
    with pytest.raises(RegistryError, match="unknown \\['median'\\]"):
        check_enum_tables(SCHEMA, {"AggregationType": [*SCHEMA.enums["AggregationType"].values, "median"]}, "the store")
    with pytest.raises(RegistryError, match="enum Colour, which the schema does not declare"):
        check_enum_tables(SCHEMA, {"Colour": ["red"]}, "billing/")


def test_create_app_refuses_a_schema_whose_enum_grew(tmp_path):
    """The server checks the store's tables against the registry's schema when it is built."""
    grown = dict(SCHEMA.enums)
    old = grown["HoldStatus"]
    grown["HoldStatus"] = dataclasses.replace(old, values=[*old.values, "disputed"])
    registry = dataclasses.replace(REGISTRY, schema=dataclasses.replace(SCHEMA, enums=grown))
    with pytest.raises(RegistryError, match="HoldStatus does not match the schema: missing \\['disputed'\\]"):
        create_app(Config(db=str(tmp_path / "x.db")), registry)
