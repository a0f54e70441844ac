"""Structured-output fields of a chat/completion request: `response_format` (json_object,
json_schema) and `tools` / `tool_choice` (chat only), validated into a grammar for constrained
sampling (edgekit.device.constrain) or a RequestError-shaped (message, field) for a 400.

No HTTP here. May import: stdlib, edgekit.device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgekit.device.constrain import JSON_OBJECT_SCHEMA, GrammarError, schema_grammar, tool_call_schema

MAX_TOOLS = 64
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names


class StructuredError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Structure:
    """What a request asks of its output's shape. `grammar` constrains generation (None: free text);
    `tools` are the declared functions ({name, description?, parameters}); `tool_choice` is "none",
    "auto" (free text; a reply that is exactly a valid call becomes tool_calls) or "required" (a
    named function is "required" with only that function); `tool_grammar` checks an "auto" reply."""

    grammar: str | None = None
    tools: tuple = ()
    tool_choice: str = "none"
    tool_grammar: str | None = None


def _grammar(schema, param: str) -> str:
    try:
        return schema_grammar(schema)
    except GrammarError as exc:
        raise StructuredError(f"'{param}': {exc}", param) from None


def response_format_grammar(value) -> str | None:
    """The grammar of a `response_format` value (None for {"type": "text"} or absent)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return _grammar(JSON_OBJECT_SCHEMA, "response_format")
    if kind != "json_schema":
        raise StructuredError("'response_format.type' must be text, json_object or json_schema", "response_format")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise StructuredError("'response_format.json_schema' must be an object with a 'schema' object",
                              "response_format.json_schema")
    return _grammar(spec.get("schema", {}), "response_format.json_schema.schema")


def _function(tool, i: int) -> dict:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise StructuredError(f"'{where}' must be {{\"type\": \"function\", \"function\": {{...}}}}", where)
    fn = tool["function"]
    if not isinstance(fn.get("name"), str) or not NAME.match(fn["name"]):
        raise StructuredError(f"'{where}.function.name' must be 1-64 letters, digits, _ or -", f"{where}.function.name")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        raise StructuredError(f"'{where}.function.parameters' must be a JSON schema object",
                              f"{where}.function.parameters")
    _grammar(params, f"{where}.function.parameters")  # a schema the engine cannot handle: 400 naming it
    out = {"name": fn["name"], "parameters": params}
    if isinstance(fn.get("description"), str):
        out["description"] = fn["description"]
    return out


def _choice(value, tools: list[dict]) -> tuple[str, list[dict]]:
    if value is None:
        return ("auto" if tools else "none"), tools
    if value in ("none", "auto", "required"):
        if value == "required" and not tools:
            raise StructuredError("'tool_choice' is required but no 'tools' were given", "tool_choice")
        return value, tools
    name = value.get("function", {}).get("name") if isinstance(value, dict) and value.get("type") == "function" \
        else None
    chosen = [t for t in tools if t["name"] == name]
    if not isinstance(value, dict) or not chosen:
        raise StructuredError("'tool_choice' must be none, auto, required or {\"type\": \"function\", "
                              "\"function\": {\"name\": one of the declared tools}}", "tool_choice")
    return "required", chosen


def parse_structure(body: dict, chat: bool) -> Structure:
    """The Structure of a request body, or StructuredError naming the field."""
    grammar = response_format_grammar(body.get("response_format"))
    raw = body.get("tools")
    if not chat or (raw is None and body.get("tool_choice") is None):
        return Structure(grammar=grammar)
    if raw is not None and (not isinstance(raw, list) or len(raw) > MAX_TOOLS):
        raise StructuredError(f"'tools' must be a list of at most {MAX_TOOLS} functions", "tools")
    tools = [_function(t, i) for i, t in enumerate(raw or [])]
    choice, offered = _choice(body.get("tool_choice"), tools)
    if choice == "none" or not tools:
        return Structure(grammar=grammar, tools=tuple(tools), tool_choice="none")
    if grammar is not None:
        raise StructuredError("'response_format' cannot be combined with tools that may be called", "response_format")
    call = _grammar(tool_call_schema(offered), "tools")
    if choice == "required":
        return Structure(grammar=call, tools=tuple(tools), tool_choice="required", tool_grammar=call)
    return Structure(tools=tuple(tools), tool_choice="auto", tool_grammar=call)
