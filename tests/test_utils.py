import pytest

from src.utils.config import parse_overrides
from src.utils.errors import InputError


def test_overrides_are_read_as_yaml_values():
    assert parse_overrides(["v_stop_prob=0.99", "layers=[0, 1]", "mom2_source=corpus", "seed=3"]) == {
        "v_stop_prob": 0.99, "layers": [0, 1], "mom2_source": "corpus", "seed": 3}
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("item", ["v_stop_prob", "=1"])
def test_an_override_without_key_or_value_is_a_clear_error(item):
    with pytest.raises(InputError, match=f"expected KEY=VALUE, got '{item}'"):
        parse_overrides([item])


def test_batches_by_key_groups_equal_keys_in_order_of_first_appearance_and_cuts_them():
    from src.utils.batching import batches_by_key

    lengths = [3, 5, 3, 3, 5, 2, 3]
    assert batches_by_key(lengths) == [[0, 2, 3, 6], [1, 4], [5]]
    assert batches_by_key(lengths, 2) == [[0, 2], [3, 6], [1, 4], [5]]
    assert batches_by_key([], 4) == []

