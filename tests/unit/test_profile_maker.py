"""Task profiles made by a chat model (sdk/profile_maker.py): the real ``openai`` client against a
local stub of an OpenAI-compatible server that records every request it gets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openai")

from discover.sdk.errors import DiscoverError  # noqa: E402
from discover.sdk.profile_maker import (  # noqa: E402
    LABELS_PROMPT,
    PROMPT_SHA256,
    get_or_make_profile,
    make_profile,
    profile_path,
    write_profile,
)
from discover.sdk.profiles import REPO_PROFILES, TaskProfile, load_profile_file  # noqa: E402

KEY = "sk-test-Very-Secret-Key-0123456789"
LABELS = [f"object {i}" for i in range(120)]

# -- the stub server ---------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def completion(content: str | None, *, model: str = "gpt-4o-2024-08-06",
               finish_reason: str = "stop") -> dict[str, Any]:
    """A chat.completion body as the OpenAI API returns it."""
    return {
        "id": "chatcmpl-stub123",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None,
                        "annotations": []},
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": {"prompt_tokens": 250, "completion_tokens": 900, "total_tokens": 1150},
        "service_tier": "default",
        "system_fingerprint": "fp_stub",
    }


def labels_reply(labels: list[str], granularity: str = "object-level categories") -> Reply:
    return Reply(body=completion(json.dumps({"granularity": granularity, "labels": labels})))


def error_reply(status: int, message: str, code: str | None, **headers: str) -> Reply:
    return Reply(status, {"error": {"message": message, "type": "error", "param": None,
                                    "code": code}}, headers)


class Stub:
    """Answers POST /v1/chat/completions with the queued replies, in order."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                with stub.lock:
                    stub.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                          "json": json.loads(raw or b"null")})
                    reply = (stub.replies.pop(0) if stub.replies
                             else error_reply(500, "stub: no reply queued", None))
                if self.path != "/v1/chat/completions":
                    reply = error_reply(404, f"no route {self.path}", None)
                data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def messages(self, i: int) -> list[dict[str, str]]:
        return self.requests[i]["json"]["messages"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_CUSTOM_HEADERS", "OPENAI_ORG_ID",
                 "OPENAI_PROJECT_ID", "OPENAI_ADMIN_KEY", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    s.thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


def make(stub: Stub, description: str | None = "Find every common object.", **kw: Any) -> TaskProfile:
    kw.setdefault("max_retries", 0)
    return make_profile("parking", description, base_url=stub.url, api_key=KEY, timeout=5, **kw)


# -- good answers ------------------------------------------------------------------------------


def test_good_answer_is_normalised_written_and_read_back(stub: Stub, tmp_path: Path) -> None:
    raw = ["Car", "  car ", "Pickup   Truck", "pickup truck", "PERSON"] + LABELS + ["person"]
    stub.queue(labels_reply(raw, "Vehicle types and road users, no stuff classes."))
    p = make(stub, "Watch a car park: vehicles coming and going.")

    assert p.labels[:3] == ["car", "pickup truck", "person"] and p.labels[3:] == LABELS
    assert p.task == "parking" and p.description == "Watch a car park: vehicles coming and going."
    mb = p.made_by
    assert mb["method"] == "openai-chat" and mb["model"] == "gpt-4o"
    assert mb["model_version"] == "gpt-4o-2024-08-06"
    assert mb["host"] == stub.url.split("/")[2] and mb["prompt_sha256"] == PROMPT_SHA256
    assert mb["description_generated"] is False and mb["attempts"] == 1
    assert mb["granularity"] == "Vehicle types and road users, no stuff classes."
    assert mb["date"].endswith("+00:00")

    # one request, Algorithm 1 filled in, the schema asked for, the key only in the header
    assert len(stub.requests) == 1
    req = stub.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {KEY}"
    body = req["json"]
    assert body["model"] == "gpt-4o"
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    schema = fmt["json_schema"]["schema"]
    assert schema["properties"]["labels"] == {"type": "array", "items": {"type": "string"}}
    assert schema["properties"]["granularity"] == {"type": "string"}
    prompt = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "user" and len(body["messages"]) == 1
    assert prompt == LABELS_PROMPT.format(min_labels=100, task="parking",
                                          description=p.description)
    assert "no fewer than 100 labels" in prompt and "granularity" in prompt
    assert prompt.index("first decide which granularity") < prompt.index('task "parking"')
    assert "sky or rivers" in prompt and "more general categories" in prompt
    assert "Watch a car park" in prompt and KEY not in json.dumps(body)

    path = write_profile(p, tmp_path / "deep" / "er" / "parking.yaml")
    assert p.path == path and path.is_file()
    text = path.read_text()
    assert text.startswith("# Task profile for 'parking'. Labels made by gpt-4o-2024-08-06")
    assert KEY not in text
    assert ("#   discover profile --task parking --description "
            "'Watch a car park: vehicles coming and going.' --force") in text
    back = load_profile_file(path)
    assert (back.task, back.labels, back.description, back.made_by) == (
        p.task, p.labels, p.description, p.made_by)
    assert back.path == path


def test_too_few_then_enough_succeeds_on_the_second_attempt(stub: Stub) -> None:
    stub.queue(labels_reply(["car", "Car", "bus"]), labels_reply(LABELS))
    p = make(stub)
    assert p.labels == LABELS and p.made_by["attempts"] == 2
    assert len(stub.requests) == 2
    second = stub.messages(1)
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[0] == stub.messages(0)[0]
    assert json.loads(second[1]["content"])["labels"] == ["car", "Car", "bus"]
    assert "only 2 distinct labels" in second[2]["content"]
    assert "at least 100" in second[2]["content"]


def test_too_few_twice_is_an_error_after_two_requests(stub: Stub) -> None:
    stub.queue(labels_reply(LABELS[:40]), labels_reply(LABELS[:60]), labels_reply(LABELS))
    with pytest.raises(DiscoverError) as e:
        make(stub)
    msg = str(e.value)
    assert "only 60 distinct labels" in msg and "at least 100" in msg and "2 attempts" in msg
    assert len(stub.requests) == 2
    assert "only 40 distinct labels" in stub.messages(1)[-1]["content"]


def test_min_labels_is_passed_to_the_prompt(stub: Stub) -> None:
    stub.queue(labels_reply(LABELS[:10]))
    p = make(stub, min_labels=10)
    assert len(p.labels) == 10
    assert "no fewer than 10 labels" in stub.messages(0)[0]["content"]


def test_missing_description_is_written_by_the_model(stub: Stub, tmp_path: Path) -> None:
    stub.queue(Reply(body=completion("  Count cars\n and vans entering a car park.  ")),
               labels_reply(LABELS))
    p = make(stub, None)
    assert p.description == "Count cars and vans entering a car park."
    assert p.made_by["description_generated"] is True and p.made_by["attempts"] == 1
    assert len(stub.requests) == 2
    first = stub.requests[0]["json"]
    assert "response_format" not in first
    assert "description" in first["messages"][0]["content"]
    assert '"parking"' in first["messages"][0]["content"]
    assert "Count cars and vans entering a car park." in stub.messages(1)[0]["content"]
    path = write_profile(p, tmp_path / "parking.yaml")
    command = next(x for x in path.read_text().splitlines() if "discover profile" in x)
    assert command == "#   discover profile --task parking --force"
    assert load_profile_file(path).made_by["description_generated"] is True


# -- errors ------------------------------------------------------------------------------------


def test_401_names_the_key_variable_and_never_shows_the_key(stub: Stub) -> None:
    stub.queue(error_reply(401, f"Incorrect API key provided: {KEY}. You can find your API key "
                                "at https://platform.openai.com/account/api-keys.",
                           "invalid_api_key"))
    with pytest.raises(DiscoverError) as e:
        make(stub, max_retries=2)
    msg = str(e.value)
    assert "401" in msg and "OPENAI_API_KEY" in msg and "127.0.0.1" in msg
    assert KEY not in msg and KEY[-8:] not in msg and "\n" not in msg
    assert len(stub.requests) == 1  # not retried


def test_429_is_retried_by_the_client_then_succeeds(stub: Stub) -> None:
    stub.queue(error_reply(429, "Rate limit reached for gpt-4o", "rate_limit_exceeded",
                           **{"retry-after-ms": "1"}),
               labels_reply(LABELS))
    p = make(stub, max_retries=2)
    assert p.labels == LABELS and p.made_by["attempts"] == 1
    assert len(stub.requests) == 2


def test_429_after_the_retries_is_one_clear_line(stub: Stub) -> None:
    stub.queue(*[error_reply(429, "Rate limit reached", "rate_limit_exceeded",
                             **{"retry-after-ms": "1"})] * 2)
    with pytest.raises(DiscoverError, match=r"rate limited \(429\).*try again later"):
        make(stub, max_retries=1)
    assert len(stub.requests) == 2


def test_429_without_quota_says_so(stub: Stub) -> None:
    stub.queue(error_reply(429, "You exceeded your current quota", "insufficient_quota"))
    with pytest.raises(DiscoverError, match="insufficient_quota"):
        make(stub)


def test_other_status_errors_give_status_and_message_without_the_key(stub: Stub) -> None:
    stub.queue(error_reply(404, f"The model `gpt-9` does not exist (key {KEY})",
                           "model_not_found"))
    with pytest.raises(DiscoverError) as e:
        make(stub, model="gpt-9")
    msg = str(e.value)
    assert "404" in msg and "gpt-9` does not exist" in msg and "--model" in msg
    assert KEY not in msg
    assert stub.requests[0]["json"]["model"] == "gpt-9"


@pytest.mark.parametrize("content, what", [
    ('{"granularity": "x", "labels": ["a", "b"', "invalid JSON"),
    ("here are your labels: car, bus", "invalid JSON"),
    ('["car", "bus"]', "JSON list, not an object"),
    ('{"granularity": "x"}', "without a 'labels' list"),
    ('{"granularity": "x", "labels": "car, bus"}', "without a 'labels' list (got str)"),
    ('{"granularity": "x", "labels": ["car", 3, null]}', "2 labels that are not strings"),
    ('{"granularity": 5, "labels": ["car"]}', "'granularity' that is not a string"),
])
def test_malformed_answers_are_clear_errors(stub: Stub, content: str, what: str) -> None:
    stub.queue(Reply(body=completion(content)))
    with pytest.raises(DiscoverError) as e:
        make(stub)
    assert what in str(e.value)
    assert len(stub.requests) == 1


def test_truncated_and_refused_answers(stub: Stub) -> None:
    stub.queue(Reply(body=completion('{"labels": ["a", "b', finish_reason="length")))
    with pytest.raises(DiscoverError, match="finish_reason=length"):
        make(stub)
    body = completion(None)
    body["choices"][0]["message"]["refusal"] = "I can't help with that."
    stub.queue(Reply(body=body))
    with pytest.raises(DiscoverError, match="refused.*can't help"):
        make(stub)


def test_unreachable_server_names_the_base_url() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as s:
        port = s.server_address[1]  # bound, then closed: nothing listens there afterwards
    url = f"http://user:pw@127.0.0.1:{port}/v1"
    with pytest.raises(DiscoverError) as e:
        make_profile("parking", "x", base_url=url, api_key=KEY, timeout=2, max_retries=0)
    msg = str(e.value)
    assert f"cannot reach http://127.0.0.1:{port}/v1" in msg and "OPENAI_BASE_URL" in msg
    assert "pw" not in msg


def test_missing_key_is_one_line_before_any_request(stub: Stub) -> None:
    with pytest.raises(DiscoverError, match="set OPENAI_API_KEY"):
        make_profile("parking", "x", base_url=stub.url)
    assert stub.requests == []


def test_key_and_base_url_come_from_the_environment(stub: Stub,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", stub.url)
    stub.queue(labels_reply(LABELS))
    assert make_profile("parking", "x", timeout=5, max_retries=0).labels == LABELS
    assert stub.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"


def test_bad_task_name_and_empty_description(stub: Stub) -> None:
    with pytest.raises(DiscoverError, match="bad task name"):
        make_profile("../etc", "x", base_url=stub.url, api_key=KEY)
    with pytest.raises(DiscoverError, match="description is empty"):
        make_profile("parking", "   ", base_url=stub.url, api_key=KEY)
    assert stub.requests == []


# -- files and the cache -----------------------------------------------------------------------


def test_profile_path() -> None:
    assert profile_path("parking", None) == REPO_PROFILES / "parking.yaml"
    assert profile_path("parking", Path("/x/mine.yml")) == Path("/x/mine.yml")
    assert profile_path("parking", Path("/x/dir")) == Path("/x/dir/parking.yaml")
    with pytest.raises(DiscoverError):
        profile_path("a/b", None)


def test_cached_profile_needs_no_request(stub: Stub, tmp_path: Path) -> None:
    stub.queue(labels_reply(LABELS), labels_reply(["fresh"] + LABELS))
    first = get_or_make_profile("parking", "x", out=tmp_path, base_url=stub.url, api_key=KEY,
                                timeout=5, max_retries=0)
    assert first.path == tmp_path / "parking.yaml" and len(stub.requests) == 1

    again = get_or_make_profile("parking", "x", out=tmp_path)  # no key, no server needed
    assert len(stub.requests) == 1
    assert (again.labels, again.made_by) == (first.labels, first.made_by)

    forced = get_or_make_profile("parking", "x", out=tmp_path, force=True, base_url=stub.url,
                                 api_key=KEY, timeout=5, max_retries=0)
    assert len(stub.requests) == 2 and forced.labels[0] == "fresh"
    assert load_profile_file(tmp_path / "parking.yaml").labels[0] == "fresh"


def test_write_profile_reports_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    p = TaskProfile(task="parking", labels=["car"], description="d", made_by={"method": "x"})
    with pytest.raises(DiscoverError, match="cannot write task profile"):
        write_profile(p, blocker / "parking.yaml")
