"""Each test runs in a registry scope: names it registers are gone afterwards, so every test
passes run twice in one process."""

import pytest

from composer import registry_scope


@pytest.fixture(autouse=True)
def _scoped_registries():
    with registry_scope():
        yield
