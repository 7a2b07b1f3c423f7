"""`check_config`: the one check every API that takes a config applies."""

from __future__ import annotations

import pytest
from nsa_spec import InvalidInputError, NSAConfig
from nsa_spec.config import check_config


@pytest.mark.parametrize(
    ("config", "kind"), [({"window": 64}, "dict"), (None, "NoneType"), ("sigmoid", "str")]
)
def test_non_configs_are_named(config, kind):
    with pytest.raises(InvalidInputError, match=rf"^config must be an nsa_spec\.NSAConfig: got {kind}$"):
        check_config(config)


def test_a_config_passes_and_is_revalidated():
    config = NSAConfig(window=64)
    assert check_config(config) is config
    object.__setattr__(config, "top_n", 1)
    with pytest.raises(InvalidInputError, match="top_n"):
        check_config(config)
