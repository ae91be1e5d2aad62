"""The YAML loader: valid files load, and every bad file gives a ConfigError with file:line."""

from __future__ import annotations

import pickle
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekernel.config import (
    ConfigError,
    ConfigProblem,
    DeviceConfig,
    FleetConfig,
    GatewayConfig,
    load,
    load_device,
    load_fleet,
    load_gateway,
)
from edgekernel.config import loader as loader_module
from edgekernel.protocol.codec import Encoding

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware-config"

DEVICE = """\
fleet: demo
device: dev-01
data_dir: ../var/dev-01
sensors:
  - stream: vibration
    rate_hz: 50
    sim:
      kind: vibration
"""


def write(folder: Path, text: str | bytes, name: str = "dev-01.yaml") -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, model: type[DeviceConfig | GatewayConfig | FleetConfig]) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load(path, model)
    return caught.value.problems


def only_problem(
    path: Path, model: type[DeviceConfig | GatewayConfig | FleetConfig] = DeviceConfig
) -> ConfigProblem:
    problems = problems_of(path, model)
    assert len(problems) == 1, problems
    return problems[0]


# --- valid files -------------------------------------------------------------------------------


def test_example_device_loads_with_its_sensors() -> None:
    config = load_device(EXAMPLE / "devices" / "dev-01.yaml")
    assert config.fleet == "demo"
    assert config.device == "dev-01"
    assert config.broker.url == "mqtt://127.0.0.1:1883"
    assert [sensor.stream for sensor in config.sensors] == ["vibration", "temperature"]
    vibration = config.sensors[0]
    assert (vibration.rate_hz, vibration.sim.kind) == (50, "vibration")
    assert (vibration.batch.max_samples, vibration.batch.max_wait_ms) == (25, 500)


@pytest.mark.parametrize("name", ["dev-01", "dev-02", "dev-03"])
def test_example_devices_keep_state_beside_the_repo(name: str) -> None:
    config = load_device(EXAMPLE / "devices" / f"{name}.yaml")
    assert config.data_dir.resolve() == (EXAMPLE.parent / "var" / name).resolve()


def test_example_devices_use_different_seeds() -> None:
    seeds = [
        sensor.sim.seed
        for name in ("dev-01", "dev-02", "dev-03")
        for sensor in load_device(EXAMPLE / "devices" / f"{name}.yaml").sensors
    ]
    assert len(seeds) == len(set(seeds))


def test_example_gateway_and_fleet_load() -> None:
    gateway = load_gateway(EXAMPLE / "gateways" / "gw-1.yaml")
    assert gateway.gateway == "gw-1"
    assert gateway.store.path.resolve() == (EXAMPLE.parent / "var" / "gw-1" / "store.db").resolve()
    fleet = load_fleet(EXAMPLE / "fleet.yaml")
    assert fleet.fleet == "demo"


def test_relative_paths_resolve_against_the_file_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    path = write(folder, DEVICE)
    monkeypatch.chdir(tmp_path)
    config = load_device(Path("a/b/dev-01.yaml"))
    assert config.data_dir.is_absolute()
    assert config.data_dir.resolve() == (tmp_path / "a" / "var" / "dev-01").resolve()
    assert load_device(str(path)).data_dir.resolve() == config.data_dir.resolve()


def test_absolute_paths_stay_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE.replace("../var/dev-01", "/srv/dev-01"))
    assert load_device(path).data_dir == Path("/srv/dev-01")


def test_enum_and_literal_values_load(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE + "encoding: cbor\n")
    assert load_device(path).encoding is Encoding.CBOR


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + DEVICE.encode())
    assert load_device(path).device == "dev-01"


def test_merge_keys_load_and_keep_positions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        fleet: demo
        device: dev-01
        data_dir: x
        _base: &base
          rate_hz: 1
        sensors:
          - <<: *base
            stream: a
          - <<: *base
            stream: b
            rate_hz: -1
        """,
    )
    problems = problems_of(path, DeviceConfig)
    assert [(p.line, p.path) for p in problems] == [(4, "_base"), (11, "sensors.1.rate_hz")]


# --- schema errors -----------------------------------------------------------------------------


def test_unknown_key_lists_the_allowed_keys_and_a_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE.replace("    rate_hz: 50", "    rate: 50"))
    problem = only_problem(path)
    assert (problem.line, problem.column, problem.path) == (6, 5, "sensors.0.rate")
    assert problem.message.startswith("unknown key 'rate' (did you mean 'rate_hz'?)")
    assert "allowed keys: stream, driver, rate_hz, unit, best_effort, publish, batch, sim" in problem.message


def test_unknown_top_level_key_lists_the_model_keys(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE + "colour: red\n")
    problem = only_problem(path)
    assert (problem.line, problem.path) == (9, "colour")
    assert "unknown key 'colour'" in problem.message
    assert "did you mean" not in problem.message
    assert "allowed keys: fleet, device, broker, data_dir, encoding, labels" in problem.message


def test_unknown_key_in_an_optional_nested_model(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE + "broker:\n  tls:\n    ca: x\n")
    problem = only_problem(path)
    assert (problem.line, problem.path) == (11, "broker.tls.ca")
    assert "allowed keys: ca_file, cert_file, key_file, insecure" in problem.message


def test_bad_enum_value_lists_the_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE + "encoding: xml\n")
    problem = only_problem(path)
    assert (problem.line, problem.path) == (9, "encoding")
    assert "'json' or 'cbor'" in problem.message
    assert "got 'xml'" in problem.message


def test_bad_literal_value_lists_the_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE.replace("kind: vibration", "kind: wobble"))
    problem = only_problem(path)
    assert (problem.line, problem.path) == (8, "sensors.0.sim.kind")
    assert "'sine', 'vibration', 'temperature', 'random-walk' or 'plant'" in problem.message


def test_wrong_type_says_what_was_found(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE.replace("rate_hz: 50", "rate_hz: fast"))
    problem = only_problem(path)
    assert (problem.line, problem.path) == (6, "sensors.0.rate_hz")
    assert "valid number" in problem.message
    assert "(got 'fast')" in problem.message


def test_out_of_range_value(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE.replace("rate_hz: 50", "rate_hz: 0"))
    problem = only_problem(path)
    assert problem.path == "sensors.0.rate_hz"
    assert "greater than 0" in problem.message


def test_missing_top_level_key_points_at_the_document(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE.replace("data_dir: ../var/dev-01\n", ""))
    problem = only_problem(path)
    assert (problem.line, problem.path, problem.message) == (1, "data_dir", "required key missing")


def test_missing_nested_key_points_at_its_parent(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet: demo\ngateway: gw-1\nstore:\n  batch_max: 10\n", "gw-1.yaml")
    problem = only_problem(path, GatewayConfig)
    assert (problem.line, problem.path, problem.message) == (3, "store.path", "required key missing")


def test_bad_broker_url_points_at_the_url(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE + "broker:\n  url: http://broker:1883\n")
    problem = only_problem(path)
    assert (problem.line, problem.path) == (10, "broker.url")
    assert problem.message == "broker url 'http://broker:1883' must start with mqtt:// or mqtts://"


def test_model_level_rule_points_at_the_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE + "broker:\n  password: a\n  password_file: b\n")
    problem = only_problem(path)
    assert (problem.line, problem.path) == (9, "broker")
    assert problem.message == "give password or password_file, not both"


def test_bad_id_explains_what_an_id_is(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE.replace("device: dev-01", "device: Dev 01"))
    problem = only_problem(path)
    assert (problem.line, problem.path) == (2, "device")
    assert problem.message.startswith("an id is 1-63 characters of a-z 0-9 _ -")


def test_bad_label_key_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE + "labels:\n  site: lab\n  Room: a\n")
    problem = only_problem(path)
    assert (problem.line, problem.path) == (11, "labels.Room")
    assert "an id is" in problem.message


def test_password_is_never_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE + "broker:\n  password: 4711\n")
    problem = only_problem(path)
    assert problem.path == "broker.password"
    assert "4711" not in str(problem)


def test_unknown_home_directory_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE.replace("../var/dev-01", "~no-such-user-here/x"))
    problem = only_problem(path)
    assert problem.path == "data_dir"
    assert "no such home directory" in problem.message


def test_every_problem_is_reported_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        fleet: Demo
        device: dev-01
        data_dir: x
        encoding: xml
        sensors:
          - stream: a
            rate_hz: -1
            colour: red
        """,
    )
    problems = problems_of(path, DeviceConfig)
    assert [(p.line, p.path) for p in problems] == [
        (1, "fleet"),
        (4, "encoding"),
        (7, "sensors.0.rate_hz"),
        (8, "sensors.0.colour"),
    ]


# --- YAML and file errors ----------------------------------------------------------------------


def test_duplicate_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE + "device: dev-02\n")
    problem = only_problem(path)
    assert (problem.line, problem.column, problem.path) == (9, 1, "device")
    assert problem.message == "duplicate key 'device' (first on line 2)"


def test_nested_duplicate_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, DEVICE + "labels:\n  site: a\n  site: b\n")
    problem = only_problem(path)
    assert (problem.line, problem.path) == (11, "labels.site")


def test_yaml_syntax_error_has_the_line_of_the_mark(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet: demo\ndevice: dev-01\nsensors: [a, b\ndata_dir: x\n")
    problem = only_problem(path)
    assert problem.line == 4
    assert problem.path == ""
    assert problem.message.startswith("YAML syntax: while parsing a flow sequence (line 3)")


def test_bad_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet: demo\nbroker:\n  url: x\n port: 1\n")
    problem = only_problem(path)
    assert problem.line == 4
    assert "YAML syntax" in problem.message


@pytest.mark.parametrize("text", ["", "\n\n", "   ", "# only a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    problem = only_problem(write(tmp_path, text))
    assert problem.message.startswith("the file is empty")


@pytest.mark.parametrize(
    ("text", "found"),
    [("- a\n- b\n", "a list"), ("just text\n", "a single value (str)"), ("42\n", "(int)")],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, found: str) -> None:
    problem = only_problem(write(tmp_path, text))
    assert problem.line == 1
    assert problem.message.startswith("the top level must be a mapping of keys")
    assert found in problem.message


def test_not_utf8_gives_the_line_and_byte(tmp_path: Path) -> None:
    path = write(tmp_path, b"fleet: demo\ndevice: d\xe9v\n")
    problem = only_problem(path)
    assert (problem.line, problem.column) == (2, 10)
    assert problem.message == "not UTF-8 text: byte 0xe9 cannot be decoded"


def test_control_character_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "fleet: demo\ndevice: a\x01b\n")
    problem = only_problem(path)
    assert problem.line == 2
    assert "U+0001" in problem.message


def test_missing_file(tmp_path: Path) -> None:
    problem = only_problem(tmp_path / "nope.yaml")
    assert problem.line is None
    assert problem.message == "cannot read the file: No such file or directory"
    assert str(problem) == f"{tmp_path / 'nope.yaml'}: cannot read the file: No such file or directory"


def test_folder_instead_of_file(tmp_path: Path) -> None:
    assert only_problem(tmp_path).message == "is a folder, not a config file"


def test_oversized_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader_module, "MAX_FILE_BYTES", 32)
    assert "larger than 32 bytes" in only_problem(write(tmp_path, DEVICE)).message


def test_several_documents_are_refused(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, DEVICE + "---\nfleet: other\n"))
    assert problem.line == 9
    assert "expected a single document" in problem.message


def test_unknown_tag_is_refused(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, DEVICE + "labels: !!python/object:os.system {}\n"))
    assert problem.line == 9
    assert "constructor" in problem.message


@pytest.mark.parametrize("value", ["2024-13-45", "!!timestamp x", "!!binary a", "!!int 0x", "!!float x"])
def test_malformed_tagged_value_is_a_config_error(tmp_path: Path, value: str) -> None:
    problem = only_problem(write(tmp_path, DEVICE + f"labels:\n  since: {value}\n"))
    assert problem.message.startswith(("a value cannot be read", "YAML syntax"))


def test_bad_timestamp_is_a_config_error(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, DEVICE + "labels:\n  since: 2024-13-45\n"))
    assert problem.message.startswith("a value cannot be read")


def test_complex_key_is_refused(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, DEVICE + "? [a, b]\n: c\n"))
    assert (problem.line, problem.message) == (9, "a key must be a plain value")


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, DEVICE + "labels: &a {x: *a}\n"))
    assert problem.message == "an alias refers to a value that contains it"


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    started = time.monotonic()
    problem = only_problem(write(tmp_path, "\n".join(lines) + "\n"))
    assert "expands to more than" in problem.message
    assert time.monotonic() - started < 5


# --- the error type ----------------------------------------------------------------------------


def test_config_error_renders_one_line_per_problem() -> None:
    problems = [
        ConfigProblem(Path("d.yaml"), 3, 5, "sensors.0.rate_hz", "too fast"),
        ConfigProblem(Path("d.yaml"), None, None, "", "cannot read the file"),
        ConfigProblem(Path("d.yaml"), 1, 1, "", "the file is empty"),
    ]
    error = ConfigError(problems)
    assert str(error).splitlines() == [
        "d.yaml:3: sensors.0.rate_hz: too fast",
        "d.yaml: cannot read the file",
        "d.yaml:1: the file is empty",
    ]
    assert error.problems == problems


def test_config_error_is_an_edgekernel_error_and_pickles() -> None:
    from edgekernel.errors import EdgeKernelError

    error = ConfigError([ConfigProblem(Path("f.yaml"), 1, 1, "a", "b")])
    assert isinstance(error, EdgeKernelError)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems
    assert str(copy) == str(error)


def test_config_error_needs_a_problem() -> None:
    with pytest.raises(ValueError, match="at least one problem"):
        ConfigError([])


def test_config_problem_is_frozen() -> None:
    problem = ConfigProblem(Path("f.yaml"), 1, 1, "a", "b")
    with pytest.raises(AttributeError):
        problem.line = 2  # type: ignore[misc]


# --- properties --------------------------------------------------------------------------------

_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "dev-01.yaml"


def _loads_or_config_error(path: Path) -> None:
    try:
        load_device(path)
    except ConfigError as err:
        problems = err.problems
    else:
        return
    assert problems
    assert all(problem.file == path for problem in problems)


@_FUZZ
@given(text=st.text())
def test_any_text_gives_a_config_or_a_config_error(fuzz_file: Path, text: str) -> None:
    fuzz_file.write_text(text, encoding="utf-8", errors="surrogatepass")
    _loads_or_config_error(fuzz_file)


@_FUZZ
@given(data=st.binary())
def test_any_bytes_give_a_config_or_a_config_error(fuzz_file: Path, data: bytes) -> None:
    fuzz_file.write_bytes(data)
    _loads_or_config_error(fuzz_file)


_YAML_ALPHABET = st.sampled_from([*"abc:-[]{}&*!<>|'\"#?,.% \n\t0123456789", "\n  ", ": ", "- "])


@_FUZZ
@given(pieces=st.lists(_YAML_ALPHABET, max_size=60))
def test_yaml_like_text_gives_a_config_or_a_config_error(fuzz_file: Path, pieces: list[str]) -> None:
    fuzz_file.write_text(DEVICE + "".join(pieces), encoding="utf-8")
    _loads_or_config_error(fuzz_file)


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_KEYS = st.sampled_from(["fleet", "device", "data_dir", "broker", "sensors", "labels", "encoding", "x"])


@_FUZZ
@given(data=st.dictionaries(_KEYS, _VALUES, max_size=8))
def test_any_mapping_gives_a_config_or_a_config_error(fuzz_file: Path, data: dict[str, object]) -> None:
    fuzz_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    _loads_or_config_error(fuzz_file)
