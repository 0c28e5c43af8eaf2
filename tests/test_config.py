"""Config: one precedence order (CLI flags > environment > file > defaults), Sidekiq's
own ``config/sidekiq.yml`` read unchanged, and bad values refused with a ConfigError
that names the key, the value and what is allowed. No Redis needed: a Config only
connects when its store is first used."""

from __future__ import annotations

import logging
import math
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kiq
from kiq.config import Config, configure, get_default, parse_queue, read_file

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# A Rails app's config/sidekiq.yml, as Sidekiq 6.4's CLI reads it.
SIDEKIQ_YML = """\
---
:concurrency: 5
:timeout: 8
:max_retries: 7
:queues:
  - critical
  - [default, 2]
  - [low, 1]
production:
  :concurrency: 25
  :queues:
    - [critical, 5]
    - default
staging:
  :concurrency: 15
"""


@pytest.fixture
def sidekiq_yml(tmp_path: Path) -> Path:
    path = tmp_path / "sidekiq.yml"
    path.write_text(SIDEKIQ_YML)
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kiq.yml"
    path.write_text(text)
    return path


# -- precedence --------------------------------------------------------------------------


def test_defaults_apply_when_nothing_is_set() -> None:
    """No file, no environment, no flags: Sidekiq's defaults."""
    config = Config.load(env={})

    assert (config.concurrency, config.queues, config.timeout, config.max_retries) == (
        10,
        [("default", 0)],
        25.0,
        25,
    )
    assert (config.environment, config.redis_url) == ("development", None)


def test_file_beats_defaults(sidekiq_yml: Path) -> None:
    """A setting in the file replaces the default."""
    assert Config.load(sidekiq_yml, env={}).concurrency == 5


def test_environment_beats_file(sidekiq_yml: Path) -> None:
    """KIQ_CONCURRENCY / KIQ_TIMEOUT replace the file's values."""
    config = Config.load(sidekiq_yml, env={"KIQ_CONCURRENCY": "3", "KIQ_TIMEOUT": "2.5"})

    assert (config.concurrency, config.timeout) == (3, 2.5)


def test_flags_beat_environment(sidekiq_yml: Path) -> None:
    """Overrides (the CLI's flags) replace environment and file values."""
    config = Config.load(sidekiq_yml, env={"KIQ_CONCURRENCY": "3"}, concurrency=2)

    assert config.concurrency == 2


def test_unset_flags_do_not_override(sidekiq_yml: Path) -> None:
    """A flag left at None (not given) keeps the lower layers' value."""
    config = Config.load(sidekiq_yml, env={}, concurrency=None, queues=None)

    assert config.concurrency == 5
    assert config.queues == [("critical", 0), ("default", 2), ("low", 1)]


def test_rails_max_threads_is_a_default_below_the_file(sidekiq_yml: Path) -> None:
    """As Sidekiq's CLI: RAILS_MAX_THREADS applies only when no concurrency is configured."""
    assert Config.load(env={"RAILS_MAX_THREADS": "3"}).concurrency == 3
    assert Config.load(sidekiq_yml, env={"RAILS_MAX_THREADS": "3"}).concurrency == 5


def test_kiq_concurrency_beats_rails_max_threads() -> None:
    """The kiq-specific variable wins over the Rails-wide one."""
    config = Config.load(env={"KIQ_CONCURRENCY": "4", "RAILS_MAX_THREADS": "3"})

    assert config.concurrency == 4


# -- Sidekiq's file format ---------------------------------------------------------------


def test_sidekiq_yml_is_read_unchanged(sidekiq_yml: Path) -> None:
    """Symbol-style keys, plain queue names and [name, weight] pairs, as Sidekiq writes them."""
    config = Config.load(sidekiq_yml, env={})

    assert (config.concurrency, config.timeout, config.max_retries) == (5, 8, 7)
    assert config.queues == [("critical", 0), ("default", 2), ("low", 1)]


def test_plain_keys_work_like_symbol_keys(tmp_path: Path) -> None:
    """``concurrency:`` and ``:concurrency:`` are the same setting."""
    path = write(tmp_path, "concurrency: 4\nqueues: [a, [b, 3]]\n")

    assert read_file(path, "development") == {"concurrency": 4, "queues": [("a", 0), ("b", 3)]}


def test_environment_section_applies_over_the_top_level(sidekiq_yml: Path) -> None:
    """``-e production`` merges the ``production:`` section over the top-level keys."""
    config = Config.load(sidekiq_yml, environment="production", env={})

    assert (config.concurrency, config.timeout) == (25, 8)
    assert config.queues == [("critical", 5), ("default", 0)]


def test_other_environment_sections_are_ignored(sidekiq_yml: Path) -> None:
    """In development the production and staging sections change nothing."""
    assert Config.load(sidekiq_yml, environment="development", env={}).concurrency == 5


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"RAILS_ENV": "production"}, 25),
        ({"RACK_ENV": "staging"}, 15),
        ({"APP_ENV": "staging", "RAILS_ENV": "production"}, 15),
        ({"KIQ_ENV": "production", "APP_ENV": "staging"}, 25),
    ],
    ids=["RAILS_ENV", "RACK_ENV", "APP_ENV-over-RAILS_ENV", "KIQ_ENV-over-APP_ENV"],
)
def test_environment_name_comes_from_the_environment(
    sidekiq_yml: Path, variables: dict[str, str], expected: int
) -> None:
    """Without -e the section is KIQ_ENV, else APP_ENV, RAILS_ENV, RACK_ENV (Sidekiq's order)."""
    assert Config.load(sidekiq_yml, env=variables).concurrency == expected


def test_explicit_environment_beats_the_variables(sidekiq_yml: Path) -> None:
    """``-e`` wins over KIQ_ENV and RAILS_ENV."""
    config = Config.load(
        sidekiq_yml, environment="staging", env={"KIQ_ENV": "production", "RAILS_ENV": "x"}
    )

    assert config.concurrency == 15


def test_unknown_file_key_is_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key kiq does not know is logged and skipped, so a shared file keeps working."""
    path = write(tmp_path, ":concurrency: 4\n:concurrensy: 5\n")

    with caplog.at_level(logging.WARNING, logger="kiq.config"):
        values = read_file(path, "development")

    assert values == {"concurrency": 4}
    assert "'concurrensy' is not a kiq setting" in caplog.text


def test_sidekiq_only_keys_are_ignored_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys that Sidekiq or its add-ons use (pidfile, strict...) raise no warning."""
    path = write(tmp_path, ":pidfile: tmp/pids/sidekiq.pid\n:strict: false\n")

    with caplog.at_level(logging.WARNING, logger="kiq.config"):
        assert read_file(path, "development") == {}

    assert caplog.text == ""


# -- Redis URL from the environment ------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"REDIS_URL": "redis://a:6379/1"}, "redis://a:6379/1"),
        ({"KIQ_REDIS_URL": "redis://k/2", "REDIS_URL": "redis://a/1"}, "redis://k/2"),
        ({"REDIS_PROVIDER": "MY_REDIS", "MY_REDIS": "redis://p/3"}, "redis://p/3"),
        (
            {"REDIS_PROVIDER": "MY_REDIS", "MY_REDIS": "redis://p/3", "REDIS_URL": "redis://a/1"},
            "redis://p/3",
        ),
        (
            {"KIQ_REDIS_URL": "redis://k/2", "REDIS_PROVIDER": "P", "P": "redis://p/3"},
            "redis://k/2",
        ),
    ],
    ids=["REDIS_URL", "KIQ_REDIS_URL-first", "REDIS_PROVIDER", "PROVIDER-over-URL", "KIQ-first"],
)
def test_redis_url_comes_from_the_environment(variables: dict[str, str], expected: str) -> None:
    """KIQ_REDIS_URL, then the variable REDIS_PROVIDER names, then REDIS_URL."""
    assert Config.load(env=variables).redis_url == expected


def test_redis_provider_holding_a_url_is_a_config_error() -> None:
    """REDIS_PROVIDER names a variable; a URL there is a mistake Sidekiq also refuses."""
    with pytest.raises(kiq.ConfigError, match=r"REDIS_PROVIDER=.*name of the variable"):
        Config.load(env={"REDIS_PROVIDER": "redis://host:6379/0"})


def test_redis_url_in_the_file_is_used(tmp_path: Path) -> None:
    """The file may carry the URL; the environment still beats it."""
    path = write(tmp_path, ":redis_url: redis://file/4\n")

    assert Config.load(path, env={}).redis_url == "redis://file/4"
    assert Config.load(path, env={"REDIS_URL": "redis://env/5"}).redis_url == "redis://env/5"


# -- bad values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        (":concurrency: 0", "concurrency", "0"),
        (":concurrency: five", "concurrency", "'five'"),
        (":concurrency: 2.5", "concurrency", "2.5"),
        (":concurrency: true", "concurrency", "True"),
        (":timeout: -1", "timeout", "-1"),
        (":timeout: .nan", "timeout", "nan"),
        (":timeout: soon", "timeout", "'soon'"),
        (":max_retries: -1", "max_retries", "-1"),
        (":queues: []", "queues", "[]"),
        (":queues: critical", "queues", "'critical'"),
        (":queues: [[critical, x]]", "queue", "'x'"),
        (":queues: [[critical, -2]]", "queue", "'-2'"),
        (":queues: [[critical, 1, 2]]", "queues", "['critical', 1, 2]"),
        (":queues: [{critical: 1}]", "queues", "{'critical': 1}"),
        (":queues: [a, [a, 2]]", "queues", "'a'"),
        (":timestamp_format: seconds", "timestamp_format", "'seconds'"),
        (":log_format: xml", "log_format", "'xml'"),
        (":tag: [1]", "tag", "[1]"),
        (":labels: {a: 1}", "labels", "{'a': 1}"),
        (":verbose: maybe", "verbose", "'maybe'"),
        (":process_ttl: 0", "process_ttl", "0"),
        (":poll_interval_average: -2", "poll_interval_average", "-2"),
        (":redis_url: 6379", "redis_url", "6379"),
    ],
)
def test_bad_file_value_names_key_value_and_what_is_allowed(
    tmp_path: Path, text: str, key: str, shown: str
) -> None:
    """The error says which key, which value, and what would be accepted."""
    path = write(tmp_path, text + "\n")

    with pytest.raises(kiq.ConfigError) as info:
        Config.load(path, env={})

    message = str(info.value)
    assert key in message
    assert shown in message
    assert any(hint in message for hint in ("use ", "must be", "allowed", "list each"))


@pytest.mark.parametrize(
    ("name", "value"),
    [("KIQ_CONCURRENCY", "many"), ("KIQ_TIMEOUT", "1s"), ("RAILS_MAX_THREADS", "")],
)
def test_bad_environment_value_names_the_variable(name: str, value: str) -> None:
    """A variable that is not a number is a ConfigError naming it and its value."""
    with pytest.raises(kiq.ConfigError, match=f"{name}={value!r}"):
        Config.load(env={name: value})


def test_duplicate_queue_is_a_config_error() -> None:
    """A queue listed twice is refused, as Sidekiq's "cannot be defined twice"."""
    with pytest.raises(kiq.ConfigError, match="'low' is listed twice"):
        Config(queues=[("low", 1), ("high", 2), ("low", 3)])


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """-C pointing nowhere says which path could not be read."""
    missing = tmp_path / "nope.yml"

    with pytest.raises(kiq.ConfigError, match=f"config file {missing}: cannot read it"):
        read_file(missing, "development")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b":concurrency: [1\n", "not valid YAML"),
        (b"- a\n- b\n", "top level must be a mapping"),
        (b"\xff\xfe\x00:concurrency: 1", "not UTF-8"),
        (b"a: " + b"[" * 5000, "not valid YAML"),
    ],
    ids=["bad-yaml", "list", "binary", "deep"],
)
def test_unreadable_file_content_is_a_config_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    """Broken YAML, a non-mapping, binary data and absurd nesting are all ConfigErrors."""
    path = tmp_path / "kiq.yml"
    path.write_bytes(content)

    with pytest.raises(kiq.ConfigError, match=message):
        read_file(path, "development")


# -- parse_queue -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("critical", ("critical", 0)), ("critical,3", ("critical", 3)), (" low , 1", ("low", 1))],
)
def test_parse_queue_reads_name_and_optional_weight(spec: str, expected: tuple[str, int]) -> None:
    """``-q NAME[,WEIGHT]``; no weight means 0, i.e. strict order."""
    assert parse_queue(spec) == expected


@pytest.mark.parametrize(
    "spec", ["default,x", "default,-1", "default,1.5", "default,1,2", ",3", ""]
)
def test_parse_queue_refuses_bad_specs_naming_them(spec: str) -> None:
    """A bad weight or an empty name is a ConfigError quoting the spec and the fix."""
    with pytest.raises(kiq.ConfigError, match=r"-q NAME|e\.g\. -q") as info:
        parse_queue(spec)

    assert repr(spec) in str(info.value)


@FUZZ
@given(st.text())
def test_parse_queue_fuzz_returns_a_queue_or_raises_config_error(spec: str) -> None:
    """Any text is a (non-empty name, weight >= 0) pair or a ConfigError."""
    try:
        name, weight = parse_queue(spec)
    except kiq.ConfigError:
        return
    assert name
    assert name == name.strip()
    assert isinstance(weight, int)
    assert weight >= 0


# -- fuzzing the file reader -------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "concurrency",
        "queues",
        "timeout",
        "max_retries",
        "tag",
        "labels",
        "verbose",
        "require",
        "redis_url",
        "timestamp_format",
        "log_format",
        "process_ttl",
        "production",
        "development",
        "dead_timeout_in_seconds",
        "poll_interval_average",
        "pidfile",
        "zzz",
    ]
).flatmap(lambda key: st.sampled_from([key, f":{key}"]))
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=50)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(string.ascii_letters + string.digits + ",: -", max_size=8)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)
_YAML_DOCS = st.dictionaries(_KEYS, _VALUES, max_size=6).map(yaml.safe_dump)


@FUZZ
@given(st.one_of(st.text(), _YAML_DOCS))
def test_read_file_fuzz_returns_settings_or_raises_config_error(tmp_path: Path, text: str) -> None:
    """Any text, and any YAML mapping of kiq-like keys, loads or raises ConfigError."""
    path = tmp_path / "fuzz.yml"
    path.write_text(text, errors="surrogatepass")
    try:
        config = Config.load(path, env={})
    except kiq.ConfigError:
        return
    assert isinstance(config.concurrency, int)
    assert all(isinstance(name, str) and name for name, _ in config.queues)
    assert isinstance(config.tag, str)
    assert isinstance(config.verbose, bool)
    assert all(isinstance(label, str) for label in config.labels)
    assert isinstance(config.redis_url, str | None)
    assert math.isfinite(config.timeout)


@FUZZ
@given(st.binary())
def test_read_file_fuzz_on_bytes_returns_settings_or_raises_config_error(
    tmp_path: Path, data: bytes
) -> None:
    """Arbitrary bytes (invalid UTF-8 included) load or raise ConfigError."""
    path = tmp_path / "fuzz.yml"
    path.write_bytes(data)
    try:
        values = read_file(path, "development")
    except kiq.ConfigError:
        return
    assert isinstance(values, dict)


# -- configure / lifecycle ---------------------------------------------------------------


def test_configure_refuses_an_unknown_setting(config: Config) -> None:
    """configure() names the bad key and lists the known ones."""
    with pytest.raises(kiq.ConfigError, match="'concurency' is not a setting"):
        configure(concurency=5)


def test_configure_with_a_bad_value_leaves_the_default_unchanged(config: Config) -> None:
    """A refused configure() does not leave the default Config half-changed."""
    with pytest.raises(kiq.ConfigError, match="concurrency: 0"):
        configure(timeout=3.0, concurrency=0)

    assert get_default() is config
    assert (config.concurrency, config.timeout) == (2, 2.0)


def test_unknown_lifecycle_event_is_a_config_error(config: Config) -> None:
    """``@kiq.on("startp")`` fails at registration, listing the events."""
    with pytest.raises(kiq.ConfigError, match="'startp' is unknown; use one of"):
        kiq.on("startp")(lambda cfg: None)


def test_config_does_not_connect_until_the_store_is_used() -> None:
    """Building a Config for a dead address is fine; nothing connects yet."""
    config = Config(redis_url="redis://127.0.0.1:1/0")

    assert config._store is None


# -- configuration is data (issue 13 point 6) -------------------------------------------


def test_store_without_a_url_says_how_to_get_one() -> None:
    """Reading ``store`` never starts a server: with no URL it is a ConfigError naming
    both ways out, and ``redis_url`` is left as it was."""
    config = Config(redis_url=None)

    with pytest.raises(kiq.ConfigError, match=r"no Redis URL is set: set REDIS_URL") as info:
        _ = config.store

    assert "call kiq.connect() (or config.ensure_redis()) first" in str(info.value)
    assert config.redis_url is None


def test_ensure_redis_keeps_a_url_that_is_set() -> None:
    """With a URL, ensure_redis() starts nothing, opens nothing, and returns that URL."""
    config = Config(redis_url="redis://127.0.0.1:1/0")

    assert config.ensure_redis() == "redis://127.0.0.1:1/0"
    assert config._store is None


@pytest.mark.slow
def test_connect_starts_the_embedded_server_on_purpose(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kiq.connect()`` with no URL anywhere is the explicit start of the embedded server:
    the default Config then holds its URL and answers."""
    from kiq import embedded

    directory = tmp_path_factory.mktemp("e")
    monkeypatch.setenv("KIQ_EMBEDDED_DIR", str(directory))
    monkeypatch.setattr(kiq.config, "_default", Config(redis_url=None))
    try:
        config = kiq.connect()

        assert config is get_default()
        assert config.redis_url == embedded.status(directory).url
        assert config.store.rtt_us() >= 0
    finally:
        get_default().close()
        embedded.release()
        embedded.stop(directory)


# -- one home for file rules -------------------------------------------------------------


def test_cron_poll_interval_is_read_from_the_file(tmp_path: Path) -> None:
    """``cron_poll_interval`` is a kiq setting (it was also listed as ignored)."""
    path = write(tmp_path, ":cron_poll_interval: 7\n")

    assert read_file(path, "development") == {"cron_poll_interval": 7}
    assert Config.load(path, env={}).cron_poll_interval == 7


def test_no_file_key_is_both_read_and_ignored() -> None:
    """A key is either a kiq setting or a Sidekiq key kiq ignores, never both."""
    assert set(kiq.config._FILE_KEYS) & kiq.config._IGNORED_FILE_KEYS == set()


def test_default_file_is_found_in_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """find_file: -C wins; else config/kiq.yml before config/sidekiq.yml; else none."""
    from kiq.config import find_file

    monkeypatch.chdir(tmp_path)
    assert find_file(None) is None
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "sidekiq.yml").write_text("")
    assert find_file(None) == "config/sidekiq.yml"
    (tmp_path / "config" / "kiq.yml").write_text("")
    assert find_file(None) == "config/kiq.yml"
    assert find_file("other.yml") == "other.yml"
