"""Positional columns named by the model's signature (issue 14, item 6): signature.named_row."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provline.stream_processors.signature import named_row, positional_order

IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def test_a_single_v2_tensor_takes_the_signature_names() -> None:
    row = {"input-0[0]": 5.1, "input-0[1]": 3.5, "input-0[2]": 1.4, "input-0[3]": 0.2}
    assert named_row(row, IRIS) == {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
                                    "petal_width": 0.2}


def test_a_one_dimensional_value_and_outputs_take_their_one_name() -> None:
    assert named_row({"input-0": 7.0}, ["tenure"]) == {"tenure": 7.0}
    assert named_row({"predict": 1.0}, ["species"]) == {"species": 1.0}
    assert named_row({"output-0": "setosa"}, ["species"]) == {"species": "setosa"}


def test_indices_are_ordered_as_numbers_not_text() -> None:
    row = {f"x[{i}]": float(i) for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)}
    names = [f"f{i}" for i in range(11)]
    assert named_row(row, names) == {f"f{i}": float(i) for i in range(11)}


def test_several_tensors_are_named_in_the_order_they_come() -> None:
    row = {"a[0]": 1.0, "a[1]": 2.0, "b": 3.0, "c[0]": 4.0, "c[1]": 5.0}
    assert named_row(row, ["p", "q", "r", "s", "t"]) == {"p": 1.0, "q": 2.0, "r": 3.0, "s": 4.0, "t": 5.0}
    # tensors in the order of their first value, each tensor's values by index
    assert positional_order(["c[1]", "a[0]", "c[0]", "b"]) == ["c[0]", "c[1]", "a[0]", "b"]


def test_named_columns_stay_and_positional_ones_take_the_remaining_names() -> None:
    row = {"sepal_length": 5.1, "input-1[0]": 3.5, "input-1[1]": 1.4, "input-1[2]": 0.2}
    assert named_row(row, IRIS) == {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,
                                    "petal_width": 0.2}
    already = dict(zip(IRIS, [5.1, 3.5, 1.4, 0.2], strict=True))
    assert named_row(already, IRIS) == already


@pytest.mark.parametrize(("row", "names"), [
    ({"input-0[0]": 1.0, "input-0[1]": 2.0, "input-0[2]": 3.0}, IRIS),  # 3 values, 4 names
    ({f"input-0[{i}]": float(i) for i in range(5)}, IRIS),  # 5 values, 4 names
    ({"sepal_length": 5.1, "x[0]": 1.0}, IRIS),  # 1 positional value, 3 names left
    ({"predict": 1.0, "predict_proba": 0.3}, ["species"]),
    ({"input-0": 1.0}, []),  # no signature names
    ({"a": 1.0, "b": 2.0}, ["x", "x"]),  # a signature repeating a name
    ({}, IRIS),
])
def test_mismatched_counts_leave_the_row_as_it_is(row: dict, names: list[str]) -> None:
    assert named_row(row, names) == row
    assert named_row(row, names) is not row  # a copy: the caller's row is never changed


@given(values=st.lists(st.floats(allow_nan=False) | st.text(max_size=3) | st.booleans(), max_size=12),
       named=st.integers(min_value=0, max_value=12))
def test_renaming_keeps_every_value_once(values: list, named: int) -> None:
    names = [f"n{i}" for i in range(len(values))]
    named = min(named, len(values))
    row = {**{names[i]: values[i] for i in range(named)},
           **{f"input-0[{i - named}]": values[i] for i in range(named, len(values))}}
    result = named_row(row, names)
    assert sorted(map(repr, result.values())) == sorted(map(repr, row.values()))
    if values:
        assert result == dict(zip(names, values, strict=True))
