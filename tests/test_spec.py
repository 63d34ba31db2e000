"""The feature spec: validation, round trips and mismatch messages."""

from __future__ import annotations

import pytest

from robolearn.errors import SpecError
from robolearn.spec import Feature, FeatureSpec


def spec(**overrides: Feature) -> FeatureSpec:
    features = {
        "state": Feature((3,), "float32", "state", names=("x", "y", "z")),
        "action": Feature((3,), "float32", "action", low=(-1, -1, 0), high=(1, 1, 0.08)),
        "cam": Feature((48, 64, 3), "uint8", "image"),
    }
    features.update(overrides)
    return FeatureSpec(features)


def test_round_trip_through_dict_keeps_everything() -> None:
    s = spec()
    again = FeatureSpec.from_dict(s.to_dict())
    assert again == s
    assert list(again) == ["state", "action", "cam"]
    assert again.action_keys == ["action"]
    assert again.observation_keys == ["state", "cam"]
    assert again["action"].high == (1.0, 1.0, 0.08)


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        (Feature((3,), "float32", "sensor"), "kind 'sensor'"),
        (Feature((48, 64), "uint8", "image"), "H×W×C"),
        (Feature((48, 64, 3), "float32", "image"), "uint8"),
        (Feature((3,), "float32", "state", names=("a", "b")), "names 2 dimensions but has 3"),
        (
            Feature((2,), "float32", "action", low=(0, 0), high=(1, -1)),
            "low > high in dimensions [1]",
        ),
        (Feature((2,), "float32", "action", low=(0,)), "low has 1 values"),
        (Feature((0,), "float32", "state"), "non-positive"),
    ],
)
def test_bad_features_are_rejected_with_the_reason(feature: Feature, message: str) -> None:
    with pytest.raises(SpecError) as err:
        FeatureSpec({"bad": feature})
    assert message in str(err.value)


def test_bad_names_and_reserved_names() -> None:
    with pytest.raises(SpecError, match="not allowed"):
        FeatureSpec({"a/b": Feature((1,), "float32", "state")})
    with pytest.raises(SpecError, match="reserved"):
        FeatureSpec({"timestamp": Feature((1,), "float32", "state")})


def test_unknown_field_in_stored_spec_is_named() -> None:
    d = spec().to_dict()
    d["state"]["colour"] = "red"
    with pytest.raises(SpecError, match=r"'state'.*colour"):
        FeatureSpec.from_dict(d)


def test_check_fits_names_the_mismatching_key() -> None:
    dataset = spec()
    policy = spec(action=Feature((2,), "float32", "action"))
    with pytest.raises(
        SpecError,
        match=r"action 'action' has shape \(3,\) in the dataset but the policy expects \(2,\)",
    ):
        dataset.check_fits(policy)
    with pytest.raises(SpecError, match="expects 'gripper', which the dataset does not have"):
        dataset.check_fits(spec(gripper=Feature((1,), "float32", "action")))
    renamed = spec(state=Feature((3,), "float32", "state", names=("x", "y", "w")))
    with pytest.raises(SpecError, match=r"dimension names differ.*2: 'z' vs 'w'"):
        dataset.check_fits(renamed)
    dataset.check_fits(spec(), keys=["state", "cam"])
