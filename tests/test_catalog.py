"""The packaged event catalog classifies events without the network."""

from shared.catalog import UNCATEGORIZED, default_catalog

CATALOG = default_catalog()


def test_every_catalog_event_keeps_its_own_category():
    assert CATALOG.category("environment-rotated") == "environments"
    assert CATALOG.category("stack-deployments-paused") == "deployments"


def test_an_unknown_event_takes_the_category_of_its_longest_known_prefix():
    assert CATALOG.category("environment-something-new") == "environments"
    assert CATALOG.category("auth-failure-something-new") == "authentication"


def test_an_event_with_no_known_prefix_is_uncategorized():
    assert CATALOG.category("zzz-unknown") == UNCATEGORIZED


def test_unknown_display_names_become_kebab_case():
    assert CATALOG.normalize("  Brand New Thing ") == "brand-new-thing"
