"""Make a task profile with a chat model (seed §3.1.1, Algorithm 1).

The model is asked once per task, through the official ``openai`` client against any
OpenAI-compatible server (GPT-4o by default), for the labels the task needs: first the
granularity the task requires, then no fewer than 100 labels at that granularity. The answer is
structured output (a JSON schema), parsed strictly, normalised, and cached as a versioned YAML
file under ``configs/profiles/`` that :mod:`sdk.profiles` reads, so the edge never needs the
network. The ``openai`` package is an optional extra (``discover-sdk[llm]``); it is imported only
when a profile is actually made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml
from discover.sdk.errors import DiscoverError
from discover.sdk.profiles import (
    PROFILE_FORMAT,
    PROFILE_VERSION,
    REPO_PROFILES,
    TaskProfile,
    load_profile_file,
    normalise_labels,
)
from discover.sdk.topics import check_name

if TYPE_CHECKING:
    import openai

DEFAULT_MODEL = "gpt-4o"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
METHOD = "openai-chat"

# Algorithm 1 of the seed, in our words: role, at least N labels with wide coverage at a fitting
# granularity, granularity decided first, the two examples, then {task} and {description}. The
# last paragraph only describes the JSON answer the response schema enforces.
LABELS_PROMPT = """\
You are an AI assistant, and your job now is to produce the object labels that a computer-vision \
task needs, based on that task.
Give no fewer than {min_labels} labels. Together they should cover a wide range of categories, \
while each label keeps a granularity that suits the task.
Work in this order: first decide which granularity the task requires, then write the labels at \
that granularity.
For example:
- For some tasks, things that cannot be detected as objects, such as the sky or rivers, must not \
be labels.
- Other tasks need a more complete account of everything in the image, and then broader, more \
general categories are needed too.
I am working on the task "{task}" and need a representative list of labels for it.
The task description is: {description}
Answer with a JSON object: "granularity" says which granularity you chose and why, in one or two \
sentences; "labels" is the list of labels, each a short English noun phrase naming one kind of \
thing that can be seen in an image, without duplicates or numbering."""

# The seed lets the task description be written by the model when none is given.
DESCRIPTION_PROMPT = """\
You are an AI assistant helping to set up a camera system that runs the computer-vision task \
"{task}". Write a one-paragraph description of this task: what it has to recognise or locate in \
the camera images and which level of detail matters. Answer with the paragraph only."""

# Sent once, after the model's first answer, when it gave too few distinct labels.
SHORTFALL_PROMPT = """\
Your list has only {count} distinct labels once duplicates are removed, but at least \
{min_labels} are needed. Answer again in the same JSON format with the complete list of at \
least {min_labels} distinct labels at the granularity you chose."""

LABELS_SCHEMA: dict[str, Any] = {
    "name": "task_labels",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {
            "granularity": {"type": "string"},
            "labels": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["granularity", "labels"],
        "additionalProperties": False,
    },
}

PROMPT_SHA256 = hashlib.sha256(
    "\n\n".join((LABELS_PROMPT, DESCRIPTION_PROMPT, SHORTFALL_PROMPT)).encode()
).hexdigest()


@dataclass
class _Answer:
    granularity: str
    labels: list[str]
    raw: str
    model: str


def profile_path(task: str, out: Path | None = None) -> Path:
    """Where the profile of ``task`` lives: ``configs/profiles/<task>.yaml`` by default; ``out``
    ending in ``.yaml``/``.yml`` is the file itself, any other ``out`` is a folder for it."""
    check_name(task, "task name")
    if out is None:
        return REPO_PROFILES / f"{task}.yaml"
    out = Path(out)
    return out if out.suffix.lower() in (".yaml", ".yml") else out / f"{task}.yaml"


def make_profile(
    task: str,
    description: str | None,
    *,
    model: str = DEFAULT_MODEL,
    base_url: str | None = None,
    api_key: str | None = None,
    min_labels: int = 100,
    client: openai.OpenAI | None = None,
    timeout: float = 60,
    max_retries: int = 2,
) -> TaskProfile:
    """Ask the chat model for the labels of ``task`` (Algorithm 1); one retry when it gives
    fewer than ``min_labels`` distinct labels. ``description=None`` lets the model write it.
    Every failure is a one-line :class:`DiscoverError`; the API key is never shown."""
    check_name(task, "task name")
    if min_labels < 1:
        raise DiscoverError(f"min_labels must be at least 1, got {min_labels}")
    if description is not None:
        description = " ".join(description.split())
        if not description:
            raise DiscoverError("the task description is empty; pass --description TEXT "
                                "or leave it out to let the model write one")
    owned = client is None
    if client is None:
        client, base_url = _make_client(base_url, api_key, timeout, max_retries)
    else:
        base_url = str(client.base_url)
        api_key = api_key or getattr(client, "api_key", None)
    where = _safe_url(base_url)
    try:
        generated = description is None
        if description is None:
            description = _ask_description(client, task, model, where, api_key)
        messages: list[dict[str, str]] = [{"role": "user", "content": LABELS_PROMPT.format(
            min_labels=min_labels, task=task, description=description)}]
        answer = _ask_labels(client, messages, model, where, api_key)
        attempts = 1
        if len(answer.labels) < min_labels:
            messages += [{"role": "assistant", "content": answer.raw},
                         {"role": "user", "content": SHORTFALL_PROMPT.format(
                             count=len(answer.labels), min_labels=min_labels)}]
            answer = _ask_labels(client, messages, model, where, api_key)
            attempts = 2
            if len(answer.labels) < min_labels:
                raise DiscoverError(
                    f"the model '{model}' gave only {len(answer.labels)} distinct labels for task "
                    f"'{task}' after 2 attempts (at least {min_labels} needed); try a stronger "
                    "model with --model or a more detailed --description")
    finally:
        if owned:
            client.close()
    made_by: dict[str, Any] = {
        "method": METHOD,
        "model": model,
        "model_version": answer.model,
        "host": _host(base_url),
        "prompt_sha256": PROMPT_SHA256,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "description_generated": generated,
        "attempts": attempts,
        "granularity": answer.granularity,
    }
    return TaskProfile(task=task, labels=answer.labels, description=description, made_by=made_by)


def write_profile(profile: TaskProfile, path: Path) -> Path:
    """Write ``profile`` as a versioned YAML file that :func:`sdk.profiles.load_profile_file`
    reads back identically (parents created, replaced atomically); returns the path."""
    path = Path(path)
    labels = normalise_labels(profile.labels)
    if not labels:
        raise DiscoverError(f"task profile '{profile.task}' has no labels; nothing written")
    data = {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "task": check_name(profile.task, "task name"),
        "description": profile.description,
        "made_by": dict(profile.made_by),
        "labels": labels,
    }
    text = _header(profile) + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise DiscoverError(f"cannot write task profile {path}: {e.strerror or e}; "
                            "choose another place with --out") from None
    profile.path = path
    return path


def get_or_make_profile(
    task: str,
    description: str | None,
    *,
    force: bool = False,
    out: Path | None = None,
    **kw: Any,
) -> TaskProfile:
    """The cached profile at :func:`profile_path` when it exists (no network, no key needed);
    otherwise, or with ``force``, make it with :func:`make_profile` and write it there."""
    path = profile_path(task, out)
    if path.is_file() and not force:
        return load_profile_file(path)
    profile = make_profile(task, description, **kw)
    write_profile(profile, path)
    return profile


# -- internals ----------------------------------------------------------------------------------


def _make_client(base_url: str | None, api_key: str | None, timeout: float,
                 max_retries: int) -> tuple[openai.OpenAI, str]:
    """The official client; base URL and key from the arguments or the environment."""
    try:
        import openai
    except ImportError:
        raise DiscoverError("making a task profile needs the 'openai' package: "
                            "pip install 'discover-sdk[llm]'") from None
    base_url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    api_key = api_key or os.environ.get(API_KEY_ENV)
    if not api_key:
        raise DiscoverError(f"set {API_KEY_ENV} to the API key of the OpenAI-compatible server at "
                            f"{_safe_url(base_url)} (any non-empty value for a local server "
                            "that needs none); the shipped profiles need no key")
    try:
        client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout,
                               max_retries=max_retries)
    except (openai.OpenAIError, ValueError, TypeError) as e:
        raise DiscoverError(f"cannot set up the OpenAI client for {_safe_url(base_url)} "
                            f"({e.__class__.__name__}); check {BASE_URL_ENV}") from None
    return client, base_url


def _ask_description(client: openai.OpenAI, task: str, model: str, where: str,
                     api_key: str | None) -> str:
    """A one-paragraph task description written by the model."""
    completion = _create(client, where, api_key, model=model, messages=[
        {"role": "user", "content": DESCRIPTION_PROMPT.format(task=task)}])
    content = _content(completion, model, "task description")
    text = " ".join(content.split())
    if not text:
        raise DiscoverError(f"the model '{model}' wrote an empty task description; "
                            "pass one with --description")
    return text


def _ask_labels(client: openai.OpenAI, messages: list[dict[str, str]], model: str, where: str,
                api_key: str | None) -> _Answer:
    """One labels request with the JSON schema; the answer parsed strictly and normalised."""
    completion = _create(client, where, api_key, model=model, messages=messages,
                         response_format={"type": "json_schema", "json_schema": LABELS_SCHEMA})
    content = _content(completion, model, "label list")
    granularity, labels = parse_labels_answer(content, model)
    return _Answer(granularity, normalise_labels(labels), content,
                   str(getattr(completion, "model", "") or model))


def parse_labels_answer(content: str, model: str = DEFAULT_MODEL) -> tuple[str, list[str]]:
    """``(granularity, labels)`` from the model's JSON answer; anything off is a DiscoverError
    naming what was wrong."""
    bad = f"the model '{model}' answered"
    try:
        data = json.loads(content)
    except json.JSONDecodeError as e:
        raise DiscoverError(f"{bad} with invalid JSON ({e.msg} at character {e.pos}); "
                            "try again or use a model that supports structured output") from None
    if not isinstance(data, dict):
        raise DiscoverError(f"{bad} with a JSON {type(data).__name__}, not an object with "
                            "'granularity' and 'labels'")
    labels = data.get("labels")
    if not isinstance(labels, list):
        raise DiscoverError(f"{bad} without a 'labels' list"
                            + (f" (got {type(labels).__name__})" if "labels" in data else ""))
    wrong = [i for i, lab in enumerate(labels) if not isinstance(lab, str)]
    if wrong:
        raise DiscoverError(f"{bad} with {len(wrong)} labels that are not strings "
                            f"(first at index {wrong[0]})")
    granularity = data.get("granularity", "")
    if not isinstance(granularity, str):
        raise DiscoverError(f"{bad} with a 'granularity' that is not a string")
    return " ".join(granularity.split()), labels


def _content(completion: Any, model: str, what: str) -> str:
    """The text of the first choice; refusals, truncation and empty answers are errors."""
    choices = getattr(completion, "choices", None) or []
    if not choices:
        raise DiscoverError(f"the model '{model}' returned no answer for the {what}")
    choice = choices[0]
    message = choice.message
    refusal = getattr(message, "refusal", None)
    if refusal:
        raise DiscoverError(f"the model '{model}' refused to write the {what}: "
                            f"{_short(str(refusal))}")
    if choice.finish_reason == "length":
        raise DiscoverError(f"the model '{model}' ran out of output tokens while writing the "
                            f"{what} (finish_reason=length); try again or use another model")
    if not isinstance(message.content, str) or not message.content.strip():
        raise DiscoverError(f"the model '{model}' returned an empty {what}")
    return message.content


def _create(client: openai.OpenAI, where: str, api_key: str | None, **kw: Any) -> Any:
    """``chat.completions.create`` with every client error turned into one clear line."""
    import openai

    try:
        return client.chat.completions.create(**kw)
    except openai.AuthenticationError:
        raise DiscoverError(f"the OpenAI-compatible server at {_host(where)} rejected the API key "
                            f"(401); set {API_KEY_ENV} to a valid key") from None
    except openai.RateLimitError as e:
        if _error_field(e, "code") == "insufficient_quota":
            raise DiscoverError(f"the account at {_host(where)} has no quota left (429 "
                                "insufficient_quota); check its plan and billing") from None
        raise DiscoverError(f"rate limited (429) by {_host(where)} even after the client's "
                            "retries; try again later") from None
    except openai.APITimeoutError:
        raise DiscoverError(f"no answer from {where} in time; check {BASE_URL_ENV} "
                            "or try again later") from None
    except openai.APIConnectionError:
        raise DiscoverError(f"cannot reach {where}; check {BASE_URL_ENV} "
                            "and the network") from None
    except openai.APIStatusError as e:
        detail = _short(_scrub(str(_error_field(e, "message") or e.message), api_key))
        hint = "; check --model" if e.status_code == 404 else ""
        raise DiscoverError(f"the OpenAI-compatible server at {_host(where)} answered "
                            f"{e.status_code}: {detail}{hint}") from None
    except openai.OpenAIError as e:
        raise DiscoverError(f"the OpenAI client failed talking to {where}: "
                            f"{_short(_scrub(str(e), api_key))}") from None


def _error_field(e: Any, name: str) -> Any:
    """``error.<name>`` (or ``<name>``) of an API error body, if there is one."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner.get(name)
    return None


def _scrub(text: str, api_key: str | None) -> str:
    """``text`` with the API key (and any long tail of it) masked."""
    if api_key:
        text = text.replace(api_key, "***")
        if len(api_key) >= 12:
            text = text.replace(api_key[-8:], "***")
    return text


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_url(url: str) -> str:
    """``url`` without user info, query or fragment (so no secret is ever shown)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the configured base URL"
    if not parts.scheme or not host:
        return "the configured base URL"
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


def _host(url: str) -> str:
    """``host[:port]`` of ``url``."""
    try:
        parts = urlsplit(str(url))
        return (parts.hostname or "unknown host") + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "unknown host"


def _header(profile: TaskProfile) -> str:
    """The leading comment: how the labels were made and how to regenerate them."""
    mb = profile.made_by
    if mb.get("method") == METHOD:
        how = (f"Labels made by {mb.get('model_version') or mb.get('model')} via "
               f"{mb.get('host')} on {mb.get('date')}\n# with the seed's Algorithm 1 prompt "
               "(see made_by)")
    else:
        how = "Labels made as recorded in made_by"
    command = f"discover profile --task {profile.task}"
    if profile.description and not mb.get("description_generated"):
        command += f" --description {shlex.quote(' '.join(profile.description.split()))}"
    if mb.get("model") and mb.get("model") != DEFAULT_MODEL:
        command += f" --model {shlex.quote(str(mb['model']))}"
    return (f"# Task profile for '{profile.task}'. {how}; regenerate with:\n"
            f"#   {command} --force\n")
