"""Configuration plumbing (sdk/config.py, sdk/registry.py) on a small model and on the real
deployment model, broker URL parsing, and task profiles (sdk/profiles.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import pytest
from discover.sdk.config import load_config, read_yaml
from discover.sdk.errors import DiscoverError
from discover.sdk.profiles import PROFILES_ENV, REPO_PROFILES, known_tasks, load_profile
from discover.sdk.registry import BackendConfig, Registry
from discover.sdk.transport.broker import PASSWORD_ENV, parse_url
from pydantic import BaseModel, ConfigDict, Field

from discover.config import Deployment

# -- a small model ----------------------------------------------------------------------------


class Broker(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "mqtt://127.0.0.1:1883"
    qos: int = 1


class Cam(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    source: str = "clip.mp4"
    fps: float | None = None


class A(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["a"] = "a"
    q: int = 1


class B(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["b"] = "b"
    r: int = 2


AorB = Annotated[Union[A, B], Field(discriminator="type")]  # noqa: UP007


class Small(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "site"
    broker: Broker = Field(default_factory=Broker)
    cams: list[Cam] = Field(default_factory=list)
    backend: AorB = Field(default_factory=A)
    override: AorB | None = None
    per_task: dict[str, A] = Field(default_factory=dict)
    out: Path | None = None


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_file_then_env_then_set_then_flags(tmp_path):
    f = write(tmp_path, "broker: {url: 'mqtt://file:1', qos: 0}\nname: from-file\n")
    assert load_config(Small, f, environ={}).broker.url == "mqtt://file:1"
    env = {"DISCOVER_BROKER__URL": "mqtt://env:2", "DISCOVER_BROKER__QOS": "2"}
    c = load_config(Small, f, environ=env)
    assert (c.broker.url, c.broker.qos, c.name) == ("mqtt://env:2", 2, "from-file")
    c = load_config(Small, f, sets=["broker.url=mqtt://set:3"], environ=env)
    assert (c.broker.url, c.broker.qos) == ("mqtt://set:3", 2)
    c = load_config(Small, f, sets=["broker.url=mqtt://set:3"], environ=env,
                    overrides={"broker.url": "mqtt://flag:4", "name": None})
    assert (c.broker.url, c.name) == ("mqtt://flag:4", "from-file")  # None flags change nothing


def test_env_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("DISCOVER_BROKER__QOS", "0")
    assert load_config(Small).broker.qos == 0


def test_env_lists_unions_dicts_and_optional_unions():
    env = {"DISCOVER_CAMS__0__ID": "front", "DISCOVER_CAMS__0__FPS": "12.5",
           "DISCOVER_BACKEND__TYPE": "b", "DISCOVER_BACKEND__R": "7",
           "DISCOVER_OVERRIDE__TYPE": "a", "DISCOVER_OVERRIDE__Q": "5",
           "DISCOVER_PER_TASK__DETECTION__Q": "3"}
    c = load_config(Small, environ=env)
    assert c.cams == [Cam(id="front", fps=12.5)]
    assert c.backend == B(r=7)
    assert c.override == A(q=5)
    assert c.per_task == {"detection": A(q=3)}


def test_text_fields_keep_text_that_looks_like_numbers(tmp_path):
    """A webcam is source 0, a camera may be called 42: text fields must not become ints."""
    env = {"DISCOVER_CAMS__0__ID": "42", "DISCOVER_CAMS__0__SOURCE": "0", "DISCOVER_NAME": "yes"}
    c = load_config(Small, environ=env, sets=["out=123"])
    assert (c.cams[0].id, c.cams[0].source, c.name, c.out) == ("42", "0", "yes", Path("123"))
    c = load_config(Small, environ={}, sets=["cams.0.id=007", "cams.0.fps=null", "out=null"])
    assert (c.cams[0].id, c.cams[0].fps, c.out) == ("007", None, None)


def test_other_discover_variables_are_not_config_keys():
    env = {PASSWORD_ENV: "hunter2", "DISCOVER_PROFILES_DIR": "/nowhere",
           "DISCOVER_NOPE__DEEP": "1", "OTHER_BROKER__URL": "mqtt://no:1"}
    c = load_config(Small, environ=env)
    assert c == Small()


def test_set_parsing():
    c = load_config(Small, sets=["name=a=b", "broker.qos=2", "cams.1.id=second",
                                 "cams.0.id=first", "backend.type=b"], environ={})
    assert c.name == "a=b"  # only the first '=' splits
    assert [cam.id for cam in c.cams] == ["first", "second"]
    assert c.broker.qos == 2 and c.backend == B()


@pytest.mark.parametrize(("item", "match"), [
    ("broker.url", "bad --set"),
    ("=3", "bad --set"),
    ("broker.port=1", "unknown config key 'broker.port'"),
    ("nothing=1", "unknown config key 'nothing'"),
    ("name.deeper=1", "unknown config key"),
    ("cams.x.id=1", "unknown config key"),
])
def test_bad_set_is_a_discover_error(item, match):
    with pytest.raises(DiscoverError, match=match):
        load_config(Small, sets=[item], environ={})


def test_invalid_values_name_the_field(tmp_path):
    with pytest.raises(DiscoverError, match=r"broker\.qos"):
        load_config(Small, sets=["broker.qos=high"], environ={})
    f = write(tmp_path, "broker: {url: x, colour: red}\n")
    with pytest.raises(DiscoverError, match=r"in .*site\.yaml: broker\.colour"):
        load_config(Small, f, environ={})
    with pytest.raises(DiscoverError, match="'c'.*'a', 'b'|'a', 'b'.*'c'"):
        load_config(Small, sets=["backend.type=c"], environ={})


def test_bad_yaml_names_the_line(tmp_path):
    f = write(tmp_path, "name: ok\nbroker:\n  url: [unclosed\n  qos: 1\n")
    with pytest.raises(DiscoverError, match=r"not valid YAML at line \d") as e:
        read_yaml(f)
    line = int(str(e.value).split("at line ")[1].split(";")[0])
    assert 3 <= line <= 5
    f = write(tmp_path, "a: 1\nb: 2\n  c: 3\n", "indent.yaml")
    with pytest.raises(DiscoverError, match="at line 3"):
        load_config(Small, f, environ={})


@pytest.mark.parametrize(("text", "match"), [
    ("- a\n- b\n", "must be a mapping"),
    ("just a string\n", "must be a mapping"),
])
def test_yaml_that_is_not_a_mapping(tmp_path, text, match):
    with pytest.raises(DiscoverError, match=match):
        read_yaml(write(tmp_path, text))


def test_empty_missing_and_binary_files(tmp_path):
    assert read_yaml(write(tmp_path, "")) == {}
    with pytest.raises(DiscoverError, match="cannot read config"):
        read_yaml(tmp_path / "missing.yaml")
    with pytest.raises(DiscoverError, match="cannot read config"):
        read_yaml(tmp_path)  # a directory
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\x00\x01\n")
    with pytest.raises(DiscoverError, match="not UTF-8"):
        read_yaml(binary)


# -- registries -------------------------------------------------------------------------------


class FooConfig(BackendConfig):
    type: Literal["foo"] = "foo"
    level: int = Field(1, ge=0)


class BarConfig(BackendConfig):
    type: Literal["bar"] = "bar"


def make_registry() -> Registry:
    reg = Registry("widget")

    @reg.register
    class Foo:
        key = "foo"
        Config = FooConfig

        def __init__(self, cfg, **kw):
            self.cfg, self.kw = cfg, kw

    @reg.register
    class Bar:
        key = "bar"
        Config = BarConfig

        def __init__(self, cfg):
            self.cfg = cfg

    return reg


def test_registry_create_and_errors():
    reg = make_registry()
    assert reg.keys() == ["bar", "foo"]
    w = reg.create({"type": "foo", "level": 3}, extra=1)
    assert w.cfg.level == 3 and w.kw == {"extra": 1}
    assert reg.create("bar").cfg == BarConfig()
    with pytest.raises(DiscoverError, match="unknown widget 'baz'; choose one of: bar, foo"):
        reg.create("baz")
    with pytest.raises(DiscoverError, match="needs a 'type'"):
        reg.parse_config({"level": 2})
    with pytest.raises(DiscoverError, match=r"bad widget 'foo' config: level.*-1"):
        reg.parse_config({"type": "foo", "level": -1})
    with pytest.raises(DiscoverError, match="bad widget 'bar' config: level"):
        reg.parse_config({"type": "bar", "level": 1})  # extra keys are refused


def test_registry_refuses_inconsistent_backends():
    reg = make_registry()

    class Wrong:
        key = "wrong"
        Config = FooConfig  # its type defaults to 'foo'

    with pytest.raises(RuntimeError):
        reg.register(Wrong)

    class Twice:
        key = "foo"
        Config = FooConfig

    with pytest.raises(RuntimeError):
        reg.register(Twice)


def test_registry_union_selects_by_type():
    reg = make_registry()

    class Holder(BaseModel):
        w: reg.config_union()

    assert isinstance(Holder.model_validate({"w": {"type": "bar"}}).w, BarConfig)
    assert Holder.model_validate({"w": {"type": "foo", "level": 4}}).w.level == 4


# -- the real deployment model ----------------------------------------------------------------


def test_deployment_env_override_of_the_codec(tmp_path):
    f = write(tmp_path, "edge:\n  codec: {type: classical}\n")
    env = {"DISCOVER_EDGE__CODEC__QUALITY": "60", "DISCOVER_BROKER__URL": "mqtt://broker.lan:1884",
           PASSWORD_ENV: "s3cret"}
    d = load_config(Deployment, f, environ=env)
    assert d.edge.codec.type == "classical" and d.edge.codec.quality == 60
    assert (d.broker.host, d.broker.port) == ("broker.lan", 1884)
    assert "s3cret" not in d.model_dump_json()  # the secret is no config key


def test_deployment_cameras_and_sink_from_set_and_env(tmp_path):
    f = write(tmp_path, "edge:\n  cameras:\n    - {id: front, source: street.mp4}\n")
    d = load_config(Deployment, f, environ={"DISCOVER_EDGE__CAMERAS__1__ID": "42",
                                            "DISCOVER_EDGE__CAMERAS__1__SOURCE": "0"},
                    sets=["edge.cameras.0.tasks=[detection, vehicles]",
                          "edge.cameras.0.codec.quality=5",
                          "sink.task_models.detection.type=regions", "sink.camera=7"])
    front, webcam = d.edge.cameras
    assert front.tasks == ["detection", "vehicles"] and front.codec.quality == 5
    assert (webcam.id, webcam.source) == ("42", "0")
    assert d.sink.task_models["detection"].type == "regions"
    assert d.sink.camera == "7"


@pytest.mark.parametrize(("sets", "match"), [
    (["edge.codec.type=elic"], "classical"),                # unknown backend names the choice
    (["sink.composer.type=dreamy"], "direct"),
    (["edge.codec.quality=0"], r"edge\.codec\.quality"),
    (["prefix=a/+/b"], "topic prefix"),
    (["edge.cameras.0.id=bad id", "edge.cameras.0.source=x"], "camera id"),
    (["edge.nope=1"], "unknown config key 'edge.nope'"),
])
def test_deployment_errors_are_one_line(sets, match):
    with pytest.raises(DiscoverError, match=match) as e:
        load_config(Deployment, sets=sets, environ={})
    assert "\n" not in str(e.value)


def test_deployment_unknown_backend_type_in_file_names_the_choices(tmp_path):
    f = write(tmp_path, "edge:\n  grounder: {type: yolo-nas}\n")
    with pytest.raises(DiscoverError, match="motion") as e:
        load_config(Deployment, f, environ={})
    assert "yolo-nas" in str(e.value) and str(f) in str(e.value)


# -- broker URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("mqtt://broker:1883", ("mqtt", "broker", 1883, None)),
    ("mqtt://broker", ("mqtt", "broker", 1883, None)),
    ("mqtts://broker", ("mqtts", "broker", 8883, None)),
    ("ssl://broker:9000", ("mqtts", "broker", 9000, None)),
    ("tcp://10.0.0.5:1884", ("mqtt", "10.0.0.5", 1884, None)),
    ("broker.lan:1999", ("mqtt", "broker.lan", 1999, None)),
    ("mqtt://edge@broker/", ("mqtt", "broker", 1883, "edge")),
    ("mqtt://[::1]:1883", ("mqtt", "::1", 1883, None)),
])
def test_good_broker_urls(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", [
    "http://broker:1883", "mqtt://", "mqtt://:1883", "mqtt://broker:99999", "mqtt://broker:port",
    "mqtt://broker/topic", "mqtt://[::1", "",
])
def test_bad_broker_urls(url):
    with pytest.raises(DiscoverError, match="bad broker URL"):
        parse_url(url)


def test_password_in_url_is_refused_without_echoing_it():
    with pytest.raises(DiscoverError, match=PASSWORD_ENV) as e:
        parse_url("mqtt://edge:hunter2@broker:1883")
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize("url", ["mqtt://edge:hunter2@broker:99999",
                                 "mqtt://edge:hunter2@broker/path"])
def test_bad_url_with_password_does_not_echo_it(url):
    with pytest.raises(DiscoverError) as e:
        parse_url(url)
    assert "hunter2" not in str(e.value)


# -- task profiles ----------------------------------------------------------------------------


SHIPPED = sorted(p.stem for p in REPO_PROFILES.glob("*.yaml"))


def test_shipped_profiles_exist():
    assert {"detection", "segmentation", "classification", "vehicles"} <= set(SHIPPED)


@pytest.mark.parametrize("task", SHIPPED)
def test_shipped_profiles_load(task, monkeypatch):
    monkeypatch.delenv(PROFILES_ENV, raising=False)
    p = load_profile(task)
    assert p.task == task and p.path == REPO_PROFILES / f"{task}.yaml"
    assert len(p.labels) >= 10
    assert len(set(p.labels)) == len(p.labels)
    assert all(lab == " ".join(lab.lower().split()) and lab for lab in p.labels)


def test_unknown_task_lists_the_known_ones(monkeypatch):
    monkeypatch.delenv(PROFILES_ENV, raising=False)
    with pytest.raises(DiscoverError) as e:
        load_profile("parking")
    msg = str(e.value)
    assert "unknown task 'parking'" in msg and "discover profile --task parking" in msg
    for task in SHIPPED:
        assert task in msg
    with pytest.raises(DiscoverError, match="task name"):
        load_profile("../etc/passwd")


GOOD = "format: discover-task-profile\nversion: 1\ntask: {task}\nlabels: [Person,  Big  Truck, person]\n"


def test_profile_dir_from_env_comes_first_and_normalises(tmp_path, monkeypatch):
    write(tmp_path, GOOD.format(task="detection"), "detection.yaml")
    write(tmp_path, GOOD.format(task="parking"), "parking.yaml")
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    assert load_profile("detection").labels == ["person", "big truck"]
    assert load_profile("detection").path == tmp_path / "detection.yaml"
    assert "parking" in known_tasks() and "vehicles" in known_tasks()


@pytest.mark.parametrize(("text", "match"), [
    ("labels: [a, b\n", "not valid YAML"),
    ("\tformat: x\n", "not valid YAML"),
    ("- a\n- b\n", "not a task profile"),
    ("format: other\nversion: 1\nlabels: [a]\n", "not a task profile"),
    ("format: discover-task-profile\nversion: 2\nlabels: [a]\n", "version 2"),
    ("format: discover-task-profile\nlabels: [a]\n", "version None"),
    ("format: discover-task-profile\nversion: 1\nlabels: person\n", "labels"),
    ("format: discover-task-profile\nversion: 1\nlabels: []\n", "labels"),
    ("format: discover-task-profile\nversion: 1\nlabels: [1, 2, '  ']\n", "labels"),
    ("format: discover-task-profile\nversion: 1\ntask: 'bad name'\nlabels: [a]\n", "task name"),
])
def test_malformed_profile_is_a_discover_error(tmp_path, monkeypatch, text, match):
    write(tmp_path, text, "broken.yaml")
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    with pytest.raises(DiscoverError, match=match) as e:
        load_profile("broken")
    assert "\n" not in str(e.value)


def test_binary_profile_is_a_discover_error(tmp_path, monkeypatch):
    (tmp_path / "broken.yaml").write_bytes(b"\xff\xd8\xff\xe0 not text")
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    with pytest.raises(DiscoverError, match="broken.yaml"):
        load_profile("broken")


def test_backend_options_without_type_tune_the_default_or_section_backend(tmp_path):
    d = load_config(Deployment, sets=["edge.codec.quality=4"], environ={})
    assert (d.edge.codec.type, d.edge.codec.quality) == ("video", 4)
    d = load_config(Deployment, sets=["edge.codec.type=classical", "edge.codec.quality=60"],
                    environ={})
    assert (d.edge.codec.type, d.edge.codec.quality) == ("classical", 60)
    f = write(tmp_path, "edge:\n  grounder: {type: nanodet, score_threshold: 0.5}\n"
                        "  cameras:\n    - {id: a, source: x.mp4, grounder: {margin: 0.3}}\n")
    d = load_config(Deployment, f, environ={})
    cam = d.edge.cameras[0]
    assert cam.grounder.type == "nanodet" and cam.grounder.margin == 0.3
    assert cam.grounder.score_threshold == 0.5  # the section's settings, tuned
    f = write(tmp_path, "edge:\n  grounder: {type: nanodet, score_threshold: 0.5}\n"
                        "  cameras:\n    - {id: a, source: x.mp4, grounder: {type: motion}}\n")
    cam = load_config(Deployment, f, environ={}).edge.cameras[0]
    assert cam.grounder.type == "motion"  # another backend: its own defaults


def test_union_errors_name_the_field_not_the_tag():
    with pytest.raises(DiscoverError) as e:
        load_config(Deployment, sets=["edge.codec.type=classical", "edge.codec.quality=0"],
                    environ={})
    assert "edge.codec.quality" in str(e.value) and "classical.quality" not in str(e.value)


def test_a_backend_flag_keeps_the_options_set_for_it(tmp_path):
    """``--codec video --set edge.codec.quality=2`` (a named flag is {"type": ...}): the flag
    picks the backend and the --set options for it stay; a file's options stay only for the
    same backend."""
    flag = {"edge.codec": {"type": "video"}}
    d = load_config(Deployment, sets=["edge.codec.quality=2", "edge.codec.encoder=av1"],
                    overrides=flag, environ={})
    assert (d.edge.codec.type, d.edge.codec.quality, d.edge.codec.encoder) == ("video", 2, "av1")
    f = write(tmp_path, "edge:\n  codec: {type: video, preset: fast}\n")
    d = load_config(Deployment, f, overrides=flag, environ={})
    assert d.edge.codec.preset == "fast"  # the file's options for this backend
    d = load_config(Deployment, f, overrides={"edge.codec": {"type": "classical"}},
                    sets=["edge.codec.quality=60"], environ={})
    assert (d.edge.codec.type, d.edge.codec.quality) == ("classical", 60)  # not the file's preset
    d = load_config(Deployment, sets=["edge.codec.type=classical"], overrides=flag, environ={})
    assert d.edge.codec.type == "video"  # the named flag still wins
    d = load_config(Deployment, sets=["sink.composer.guard_px=8"],
                    overrides={"sink.composer": {"type": "background"}}, environ={})
    assert (d.sink.composer.type, d.sink.composer.guard_px) == ("background", 8)
