"""Chat messages -> prompt text, with the bundle's chat template (Jinja, rendered in a sandbox as
transformers does) or a plain default when the model has none.

May import: stdlib, jinja2.
"""

from __future__ import annotations

from functools import lru_cache

DEFAULT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
ROLES = ("system", "user", "assistant")


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


@lru_cache(maxsize=4)
def _compile(template: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render(messages: list[dict], template: str | None, bos_token: str = "", eos_token: str = "") -> str:
    """The prompt text for `messages`, ending where the assistant's reply starts."""
    from jinja2.exceptions import TemplateError

    try:
        return _compile(template or DEFAULT_TEMPLATE).render(messages=messages, add_generation_prompt=True,
                                                            bos_token=bos_token, eos_token=eos_token)
    except TemplateError as exc:
        raise ChatError(f"the model's chat template rejected these messages: {exc}") from None
