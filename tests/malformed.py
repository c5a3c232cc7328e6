"""Malformed broker entries for the hostile-input tests: hand-picked kinds and seeded random ones.

Every entry carries a unique token (``fz<run><n>z``) near its start, in the raw bytes, so whatever
becomes of it (an effect of ``t.ok``, a stored failure, raw text or base64 in ``raw_message``) can
be traced back to exactly one entry.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

TOKEN_RE = re.compile(rb"fz[0-9a-f]{6}\d{4}z")
#: Names the worker's fetch uses in Redis (spelled out here, so these tests also run against a
#: version without them and fail there by their counts, not by an import).
TAKES_KEY = "reliable.fetch.takes"


def quarantine_list(queue: str) -> str:
    return f"{queue}\x06\x16quarantine"


@dataclass
class Entry:
    token: str
    data: bytes
    kind: str
    valid: bool = False  # a well-formed t.ok message: must end as an effect


def deep_in(envelope: dict[str, Any], depth: int, token: str) -> bytes:
    """``envelope`` as JSON with a header nested ``depth`` objects deep (too deep for json.dumps)."""
    envelope["headers"]["deep"] = "@DEEP@"
    deep = b'{"d": ' * depth + json.dumps(token).encode() + b"}" * depth
    return _dumps(envelope).replace(b'"@DEEP@"', deep)


def tokens_in(data: bytes | str) -> set[str]:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return {m.decode() for m in TOKEN_RE.findall(data)}


def _b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


class Factory:
    """Builds entries from ``template``: a real envelope of a ``t.ok`` message as kombu writes it."""

    def __init__(self, template: dict[str, Any], seed: int) -> None:
        self.template = template
        self.rng = random.Random(seed)
        self.run = uuid.uuid4().hex[:6]
        self.count = 0

    def token(self) -> str:
        self.count += 1
        return f"fz{self.run}{self.count:04d}z"

    def envelope(self, token: str, args: Any = None, body: Any = None) -> dict[str, Any]:
        """A well-formed envelope of ``t.ok(token)`` (``args`` / decoded ``body`` replace the defaults)."""
        env = copy.deepcopy(self.template)
        headers, props = env["headers"], env["properties"]
        args = [token] if args is None else args
        headers.update(id=token, root_id=token, argsrepr=repr(args), task="t.ok")
        props.update(correlation_id=token, delivery_tag=f"{token}-tag")
        embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        env["body"] = _b64([args, {}, embed] if body is None else body)
        return {"fz": token, **env}  # the token first: it survives any cut of the raw text

    def valid(self) -> Entry:
        token = self.token()
        return Entry(token, _dumps(self.envelope(token)), "valid", valid=True)

    # -- hand-picked kinds -----------------------------------------------------------------

    def kinds(self) -> dict[str, Callable[[str], bytes]]:
        """Named malformed entries, one builder each (``token`` -> raw bytes)."""
        env = self.envelope

        def without(path: str) -> Callable[[str], bytes]:
            def build(token: str) -> bytes:
                e = env(token)
                *parents, last = path.split(".")
                target = e
                for p in parents:
                    target = target[p]
                del target[last]
                return _dumps(e)

            return build

        def setting(path: str, value: Any) -> Callable[[str], bytes]:
            def build(token: str) -> bytes:
                e = env(token)
                *parents, last = path.split(".")
                target = e
                for p in parents:
                    target = target[p]
                target[last] = value(token) if callable(value) else value
                return _dumps(e)

            return build

        def deep_header(depth: int) -> Callable[[str], bytes]:
            return lambda t: deep_in(env(t), depth, t)

        return {
            "not_json": lambda t: f"{t} this is not JSON {{".encode(),
            "truncated": lambda t: _dumps(env(t))[:60],
            "json_list": lambda t: _dumps([t, 1, 2]),
            "json_string": lambda t: _dumps(f"a string {t}"),
            "json_number": lambda t: str(10**9 + int(t[8:12])).encode(),  # no room for the token: matched whole
            "deep_nesting": lambda t: b'["' + t.encode() + b'", ' + b"[" * 100_000 + b"]" * 100_000 + b"]",
            "deep_in_headers": deep_header(5000),
            "not_utf8": lambda t: _dumps(env(t)).replace(b'"lang": "py"', b'"lang": "p\xff\xfey"'),
            "not_utf8_only": lambda t: t.encode() + b"\xff\xfe\x00\x81garbage",
            "raw_control_chars": lambda t: _dumps(env(t)).replace(b'"lang": "py"', b'"lang": "p\x00\x1b\x07y"'),
            "no_properties": without("properties"),
            "properties_list": setting("properties", lambda t: [t]),
            "no_delivery_tag": without("properties.delivery_tag"),
            "delivery_tag_int": setting("properties.delivery_tag", lambda t: int(t[8:12]) + 10**9),
            "no_delivery_info": without("properties.delivery_info"),
            "routing_key_null": setting("properties.delivery_info.routing_key", None),
            "body_not_base64": setting("body", lambda t: f"!!{t}!! not base64 ="),
            "body_bad_padding": setting("body", "abc"),
            "body_a_number": setting("body", 42),
            "body_encoding_unknown": setting("properties.body_encoding", "rot13"),
            "body_encoding_list": setting("properties.body_encoding", ["base64"]),
            "headers_list": setting("headers", lambda t: [t]),
            "headers_null": setting("headers", None),
            "content_type_int": setting("content-type", 7),
            "surrogate_tag": lambda t: _dumps(env(t)).replace(f'"{t}-tag"'.encode(), f'"{t}-\\ud800"'.encode()),
            "huge_header": setting("headers.huge", lambda t: "H" * 300_000),  # deliverable: runs
            "huge_garbage": lambda t: t.encode() + b" not JSON " + b"G" * 100_000,
            # well-formed envelopes that Celery cannot take as task messages
            "task_a_list": setting("headers.task", lambda t: ["t.ok", t]),
            "task_an_int": setting("headers.task", 5),
            "task_unknown": setting("headers.task", lambda t: f"t.nope_{t}"),
            "no_task_header": without("headers.task"),
            "no_id_header": without("headers.id"),
            "body_not_json": setting("body", lambda t: base64.b64encode(b"{not json " + t.encode()).decode()),
            "body_not_a_3_tuple": lambda t: _dumps(env(t, body=[[t], {}])),
            "body_a_dict": lambda t: _dumps(env(t, body={"args": [t]})),
            "args_a_dict": lambda t: _dumps(env(t, body=[{"k": t}, {}, {}])),
            "kwargs_a_list": lambda t: _dumps(env(t, body=[[t], [t], {}])),
            "too_many_args": lambda t: _dumps(env(t, args=[t, 1, 2, 3])),
            "content_type_pickle": setting("content-type", "application/x-python-serialize"),
            "content_type_unknown": setting("content-type", "application/x-evil"),
            "compression_bogus": setting("headers.compression", "application/x-nope"),
            "eta_garbage": setting("headers.eta", lambda t: f"not a date {t}"),
            "timelimit_garbage": setting("headers.timelimit", "soon"),
            "retries_a_string": setting("headers.retries", "many"),
            "nul_in_id": setting("headers.id", lambda t: f"{t}\x00nul"),
        }

    def picked(self) -> list[Entry]:
        entries = []
        for kind, build in self.kinds().items():
            token = self.token()
            entries.append(Entry(token, build(token), kind))
        return entries

    # -- random ----------------------------------------------------------------------------

    def random(self, n: int, valid_share: float = 0.15) -> list[Entry]:
        """``n`` seeded random entries: JSON edits of the envelope, cuts, wrong types, noise."""
        entries: list[Entry] = []
        mutations = [
            self._cut, self._noise, self._bad_utf8, self._control, self._delete, self._retype,
            self._retype, self._body, self._celery_body, self._header, self._deep, self._huge,
            self._non_object, self._picked,
        ]  # fmt: skip
        while len(entries) < n:
            if self.rng.random() < valid_share:
                entries.append(self.valid())
                continue
            token = self.token()
            mutate = self.rng.choice(mutations)
            kind, data = mutate(token)
            if token not in tokens_in(data) and kind != "kind:json_number":
                data = token.encode() + b" " + data  # an edit that removed it: lead with it
            entries.append(Entry(token, data, f"random:{kind}"))
        return entries

    def _value(self, token: str) -> Any:
        r = self.rng
        choices: list[Any] = [
            None, True, r.randint(-(10**6), 10**6), r.random() * 1e6, "", f"s-{token}",
            [token], {"k": token}, [], {}, "\x00\x1b\u2028" + token, 10**30,
        ]  # fmt: skip
        return r.choice(choices)

    def _paths(self, env: dict[str, Any]) -> list[tuple[Any, str]]:
        found: list[tuple[Any, str]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for key in list(node):
                    if key == "fz":
                        continue
                    found.append((node, key))
                    walk(node[key])

        walk(env)
        return found

    def _cut(self, token: str) -> tuple[str, bytes]:
        data = _dumps(self.envelope(token))
        return "cut", data[: self.rng.randint(1, len(data) - 1)]

    def _noise(self, token: str) -> tuple[str, bytes]:
        size = self.rng.randint(0, 300)
        return "noise", token.encode() + bytes(self.rng.getrandbits(8) for _ in range(size))

    def _bad_utf8(self, token: str) -> tuple[str, bytes]:
        data = bytearray(_dumps(self.envelope(token)))
        at = self.rng.randint(len(token) + 10, len(data) - 2)
        data[at:at] = self.rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        return "bad_utf8", bytes(data)

    def _control(self, token: str) -> tuple[str, bytes]:
        data = bytearray(_dumps(self.envelope(token)))
        at = self.rng.randint(len(token) + 10, len(data) - 2)
        data[at:at] = bytes([self.rng.choice([0, 1, 7, 8, 10, 13, 27, 31, 127])])
        return "control", bytes(data)

    def _delete(self, token: str) -> tuple[str, bytes]:
        env = self.envelope(token)
        node, key = self.rng.choice(self._paths(env))
        del node[key]
        return f"delete:{key}", _dumps(env)

    def _retype(self, token: str) -> tuple[str, bytes]:
        env = self.envelope(token)
        node, key = self.rng.choice(self._paths(env))
        if key in ("eta", "expires"):
            node[key] = f"never-{token}"  # a date in the past or future would change timing, not validity
        elif key == "id":
            node[key] = self.rng.choice([[token], {"id": token}, f"{token}-other"])  # ids stay unique
        else:
            node[key] = self._value(token)
        return f"retype:{key}", _dumps(env)

    def _body(self, token: str) -> tuple[str, bytes]:
        env = self.envelope(token)
        env["body"] = self.rng.choice(
            [f"{token}!!!", "====", "a", base64.b64encode(b"\xff\xfe" + token.encode()).decode()[:-1], "", None]
        )
        return "body", _dumps(env)

    def _celery_body(self, token: str) -> tuple[str, bytes]:
        shapes: list[Any] = [
            [[token], {}], [[token], {}, {}, {}], {"a": token}, token, [token, {}, {}], [[token], [token], {}],
            [[token], {}, [token]], [[token, token], {}, {}], [[], {"key": token, "x": 1}, {}], [[], {}, {}],
        ]  # fmt: skip
        return "celery_body", _dumps(self.envelope(token, body=self.rng.choice(shapes)))

    def _header(self, token: str) -> tuple[str, bytes]:
        env = self.envelope(token)
        headers = env["headers"]
        key = self.rng.choice(["task", "id", "lang", "retries", "timelimit", "shadow", "group", "origin", "stamps"])
        if key == "task":
            headers[key] = self.rng.choice([[token], 7, None, {"n": token}, f"t.unknown-{token}", ""])
        elif key == "id":
            headers[key] = self.rng.choice([[token], {"i": token}, 12345678901234567890 + int(token[8:12])])
        else:
            headers[key] = self._value(token)
        return f"header:{key}", _dumps(env)

    def _deep(self, token: str) -> tuple[str, bytes]:
        depth = self.rng.choice([900, 1100, 5000, 50_000])
        if self.rng.random() < 0.5:
            return "deep", token.encode() + b" " + b"[" * depth + b"1" + b"]" * depth
        return "deep_header", deep_in(self.envelope(token), depth, token)

    def _huge(self, token: str) -> tuple[str, bytes]:
        env = self.envelope(token)
        size = self.rng.choice([70_000, 200_000])
        if self.rng.random() < 0.5:
            env["headers"]["huge"] = "x" * size
        else:
            env["body"] = "A" * size + "="  # not the protocol's body, and too big to keep whole
        return "huge", _dumps(env)

    def _non_object(self, token: str) -> tuple[str, bytes]:
        return "non_object", _dumps(self.rng.choice([[token], f"str {token}", [None, token], [3.5, token], [[token]]]))

    def _picked(self, token: str) -> tuple[str, bytes]:
        kind, build = self.rng.choice(sorted(self.kinds().items()))
        return f"kind:{kind}", build(token)


def row_tokens(row: dict[str, Any]) -> set[str]:
    """Tokens in a failed row: anywhere in it, and in any base64 text it keeps."""
    found = tokens_in(json.dumps(row, default=str, ensure_ascii=False))

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "base64" and isinstance(value, str):
                    found.update(tokens_in(base64.b64decode(value)))
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(row.get("raw_message"))
    return found


def _entry_text(row: dict[str, Any]) -> bytes | None:
    kept = (row.get("raw_message") or {}).get("entry") or {}
    if "text" in kept:
        return str(kept["text"]).encode("utf-8", "surrogatepass")
    if "base64" in kept:
        return base64.b64decode(kept["base64"])
    return None


def tally(entries: Iterable[Entry], effects: Iterable[str], rows: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """What each entry became: ``{token: ["effect" | "row:<reason>", ...]}`` (one item each when
    nothing is lost or doubled). An entry with no room for its token is matched by its whole text;
    anything that matches no entry shows under ``"?"``."""
    entries = list(entries)
    outcome: dict[str, list[str]] = {entry.token: [] for entry in entries}
    whole = {entry.data: entry.token for entry in entries if entry.token not in tokens_in(entry.data)}
    for key in effects:
        for token in tokens_in(key) or {"?"}:
            outcome.setdefault(token, []).append("effect")
    for row in rows:
        text = _entry_text(row)
        found = row_tokens(row) or ({whole[text]} if text in whole else {"?"})
        for token in found:
            outcome.setdefault(token, []).append(f"row:{row['reason']}")
    return outcome
