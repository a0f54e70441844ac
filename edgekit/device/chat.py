"""Chat messages -> prompt text, with the bundle's chat template (Jinja, rendered in a sandbox as
transformers does) or a plain default when the model has none.

Tools (OpenAI function declarations) go to a template that reads `tools`, else into a system message.
May import: stdlib, jinja2.
"""

from __future__ import annotations

import json
from functools import lru_cache

DEFAULT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
ROLES = ("system", "user", "assistant", "tool")
# Tools for a chat template without a `tools` variable: a system message (documented in docs/serving.md).
TOOLS_PREAMBLE = 'To call a function, reply {"name": ..., "arguments": ...}. Functions:\n'


class ChatError(ValueError):
    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message)
        self.param = param


def check_messages(messages) -> list[dict]:
    """[{role, content}] validated: non-empty list, known roles, string content."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatError(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role == "assistant" and content is None and isinstance(m.get("tool_calls"), list):
            content = _calls_text(m["tool_calls"], i)  # an earlier call, as the model wrote it
        if role not in ROLES:
            raise ChatError(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ChatError(f"messages[{i}].content parts must be text parts")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ChatError(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise ChatError("'messages' has no text")
    return out


def _calls_text(calls: list, i: int) -> str:
    try:
        return "\n".join(json.dumps({"name": c["function"]["name"],
                                      "arguments": json.loads(c["function"]["arguments"])}) for c in calls)
    except (TypeError, KeyError, ValueError):
        raise ChatError(f"messages[{i}].tool_calls must be OpenAI function calls with JSON arguments") from None


def template_takes_tools(template: str | None) -> bool:
    """Whether the chat template reads a `tools` variable (then tools are rendered by it)."""
    from jinja2 import meta

    return bool(template) and "tools" in meta.find_undeclared_variables(_compile(template).environment.parse(template))


def with_tools(messages: list[dict], tools: list[dict], template: str | None) -> tuple[list[dict], list | None]:
    """(messages, the `tools` template variable): the template's own rendering when it takes `tools`,
    else a system message listing the functions (merged into a leading system message) and tool
    results as user messages."""
    if template_takes_tools(template):
        return messages, [{"type": "function", "function": t} for t in tools]
    listing = TOOLS_PREAMBLE + "\n".join(json.dumps(t, separators=(",", ":")) for t in tools)
    out = [{"role": "user", "content": "Function result: " + m["content"]} if m["role"] == "tool" else m
           for m in messages]
    if out and out[0]["role"] == "system":
        return [{"role": "system", "content": out[0]["content"] + "\n\n" + listing}] + out[1:], None
    return [{"role": "system", "content": listing}] + out, None


@lru_cache(maxsize=4)
def _compile(template: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render(messages: list[dict], template: str | None, bos_token: str = "", eos_token: str = "",
           tools: list | None = None) -> str:
    """The prompt text for `messages`, ending where the assistant's reply starts; `tools` is passed to
    a template that takes it (see with_tools)."""
    from jinja2.exceptions import TemplateError

    try:
        return _compile(template or DEFAULT_TEMPLATE).render(messages=messages, add_generation_prompt=True,
                                                            bos_token=bos_token, eos_token=eos_token, tools=tools)
    except TemplateError as exc:
        raise ChatError(f"the model's chat template rejected these messages: {exc}") from None
