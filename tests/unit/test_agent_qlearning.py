"""The `qlearning` agent's parts that need no kernel: its config, the bins, the Q-learner and the saved
table it reads back from `ctx.state`."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgekernel.device.agents.builtin.qlearning import (
    LOCAL,
    OFFLOAD,
    Learner,
    QLearningConfig,
    bin_of,
    parse_table,
)

BASE = {"source": "vibration", "model": "vibration-anomaly", "remote": "coap://127.0.0.1:5683"}


def learner(seed: int = 0, **kw: float) -> Learner:
    settings = {"alpha": 0.2, "gamma": 0.3, "epsilon": 0.3, "epsilon_min": 0.02, "epsilon_decay": 0.99}
    settings.update(kw)
    return Learner(**settings, rng=random.Random(seed))  # type: ignore[arg-type]


def test_bins_cut_at_their_upper_edges() -> None:
    edges = [0, 2, 8]
    assert [bin_of(v, edges) for v in (0, 1, 2, 3, 8, 9, 1e9)] == [0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"remote": "http://gw:5683"}, "must be coap://"),
        ({"remote": "coap://gw:5683/infer"}, "only hold scheme"),
        ({"remote": "coap://gw:99999"}, "bad port"),
        ({"queue_bins": [0, 8, 2]}, "increasing"),
        ({"latency_bins": [1.0, 1.0]}, "increasing"),
        ({"epsilon": 0.01, "epsilon_min": 0.1}, "epsilon_min"),
        ({"gamma": 1.0}, "less than 1"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_config_refuses_what_cannot_work(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        QLearningConfig.model_validate({**BASE, **change})


def test_config_defaults_validate() -> None:
    config = QLearningConfig.model_validate({**BASE, "remote": "coap://gw/"})
    assert config.remote == "coap://gw"
    assert config.policy == "learn"


def test_learns_the_faster_path_per_state() -> None:
    q = learner()
    rewards = {("busy", LOCAL): -3.0, ("busy", OFFLOAD): -0.6, ("idle", LOCAL): -0.1, ("idle", OFFLOAD): -0.6}
    rng = random.Random(1)
    state = "idle"
    for _ in range(2000):
        action = q.choose(state)
        next_state = rng.choice(["busy", "idle"])
        q.update(state, action, rewards[(state, action)], next_state)
        state = next_state
    q.epsilon = 0.0
    assert q.choose("busy") == OFFLOAD
    assert q.choose("idle") == LOCAL
    assert q.epsilon == 0.0


def test_epsilon_decays_to_its_floor() -> None:
    q = learner(epsilon=0.5, epsilon_min=0.05, epsilon_decay=0.9)
    for _ in range(100):
        q.update("s", LOCAL, -1.0, "s")
    assert q.epsilon == pytest.approx(0.05)
    assert q.steps == 100


def test_an_unknown_state_is_a_tie_and_a_tie_stays_local() -> None:
    q = learner(epsilon=0.0, epsilon_min=0.0)
    assert q.choose("never-seen") == LOCAL


def test_a_saved_table_comes_back_under_the_same_bins_only() -> None:
    q = learner()
    for i in range(50):
        q.update(f"{i % 3},0,1", i % 2, -0.5 * i, "0,0,0")
    saved = json.loads(json.dumps(q.to_json([[0, 2, 8], [0.5, 1.0]])))
    again = learner()
    assert again.restore(saved, [[0, 2, 8], [0.5, 1.0]])
    assert again.table.keys() == q.table.keys()
    for state, values in q.table.items():
        assert again.table[state] == pytest.approx(values, abs=1e-5)
    assert again.steps == 50
    assert again.epsilon == pytest.approx(q.epsilon)
    other = learner()
    assert not other.restore(saved, [[0, 4], [0.5, 1.0]])
    assert other.table == {}


def test_rewards_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        learner().update("s", LOCAL, float("nan"), "s")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_parse_table_never_raises_on_any_json(value: object) -> None:
    parsed = parse_table(value)
    assert parsed is None or isinstance(parsed[3], dict)


@given(
    st.dictionaries(
        st.text(max_size=12),
        st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=2, max_size=2),
        max_size=20,
    ),
    st.integers(min_value=0, max_value=10**9),
    st.floats(min_value=0, max_value=1),
)
def test_a_saved_table_parses_back(table: dict[str, list[float]], steps: int, epsilon: float) -> None:
    saved = {"v": 1, "bins": [[0], [1.0]], "steps": steps, "epsilon": epsilon, "table": table}
    parsed = parse_table(json.loads(json.dumps(saved)))
    assert parsed is not None
    assert parsed[1:] == (steps, epsilon, table)


@given(st.sampled_from(["steps", "epsilon", "table", "v"]), json_values)
def test_a_damaged_table_is_refused(key: str, junk: object) -> None:
    saved: dict[str, object] = {
        "v": 1,
        "bins": [],
        "steps": 3,
        "epsilon": 0.1,
        "table": {"0,0,0": [0.0, -1.0]},
    }
    saved[key] = junk
    parsed = parse_table(saved)
    if parsed is not None:
        _, steps, epsilon, table = parsed
        assert isinstance(steps, int)
        assert steps >= 0
        assert isinstance(epsilon, float)
        assert all(len(q) == 2 for q in table.values())
