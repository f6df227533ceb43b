"""Build a ChatTemplate from router configuration (start-up time)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from airouter.templates.chat_template import ChatTemplate
from airouter.templates.errors import TemplateConfigError
from airouter.templates.formats import PromptFormat, get_format

# the rest of transformers' special_tokens_map, also visible to HF templates
_OTHER_SPECIAL_TOKENS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def load_template(
    *,
    format: str | None = None,
    tokenizer_config: str | Path | None = None,
    template_file: str | Path | None = None,
    extra_context: Mapping[str, Any] | None = None,
) -> ChatTemplate:
    """The ChatTemplate a backend's config asks for.

    - ``format``: a built-in format name (see BUILTIN_FORMATS);
    - ``tokenizer_config``: a Hugging Face ``tokenizer_config.json``; its ``chat_template``
      (or a sibling ``chat_template.jinja``) and bos/eos tokens are used;
    - ``template_file``: a jinja chat template file; it replaces the template of
      ``format``/``tokenizer_config`` (whose tokens it then uses) or stands alone.

    ``format`` and ``tokenizer_config`` are mutually exclusive. ``extra_context`` adds
    template variables (e.g. ``date_string`` for llama3.1). Raises TemplateConfigError.
    """
    if format is not None and tokenizer_config is not None:
        raise TemplateConfigError("set either a prompt format or a tokenizer_config, not both")
    extra: dict[str, Any] = {}
    if format is not None:
        base = get_format(format)
    elif tokenizer_config is not None:
        base, extra = _from_tokenizer_config(Path(tokenizer_config), template_file is None)
    elif template_file is not None:
        base = PromptFormat(name="", template="")
    else:
        raise TemplateConfigError(
            "no prompt template: set format, tokenizer_config or template_file"
        )
    origin = base.name
    if template_file is not None:
        path = Path(template_file)
        if path.suffix == ".json":
            raise TemplateConfigError(
                f"template file {path} looks like JSON; "
                "pass a tokenizer_config.json as tokenizer_config"
            )
        origin = str(path)
        base = replace(
            base,
            name=origin,
            template=_read_text(path, "template file"),
            supports_tools=True,
            native_tool_turns=True,
            tool_call_id_length=None,
        )
    return ChatTemplate(base, extra_context={**extra, **(extra_context or {})}, origin=origin)


def _from_tokenizer_config(path: Path, need_template: bool) -> tuple[PromptFormat, dict[str, Any]]:
    try:
        config = json.loads(_read_text(path, "tokenizer config"))
    except ValueError as exc:
        raise TemplateConfigError(f"tokenizer config {path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise TemplateConfigError(f"tokenizer config {path} must hold a JSON object")
    source = _chat_template(path, config.get("chat_template"))
    if source is None:
        sibling = path.with_name("chat_template.jinja")
        # newer transformers save the template next to the config instead of inside it
        if sibling.is_file():
            source = _read_text(sibling, "chat template")
    if source is None and need_template:
        raise TemplateConfigError(
            f"tokenizer config {path} has no chat_template; set a format or a template_file"
        )
    eos = _token(path, config, "eos_token")
    extra: dict[str, Any] = {
        key: _token(path, config, key)
        for key in _OTHER_SPECIAL_TOKENS
        if config.get(key) is not None
    }
    additional = config.get("additional_special_tokens")
    if isinstance(additional, list):
        extra["additional_special_tokens"] = [
            _token_text(path, "additional_special_tokens", t) for t in additional
        ]
    fmt = PromptFormat(
        name=str(path),
        template=source or "",
        bos_token=_token(path, config, "bos_token"),
        eos_token=eos,
        stop_tokens=(eos,) if eos else (),
    )
    return fmt, extra


def _chat_template(path: Path, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        # the named-templates form: [{"name": "default", "template": ...}, {"name": ...}, ...]
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        default = named.get("default")
        if isinstance(default, str):
            return default
        names = ", ".join(str(name) for name in named)
        raise TemplateConfigError(
            f"tokenizer config {path}: chat_template lists templates ({names}) "
            "but none named 'default'"
        )
    raise TemplateConfigError(f"tokenizer config {path}: chat_template must be a string or a list")


def _token(path: Path, config: Mapping[str, Any], key: str) -> str:
    value = config.get(key)
    return "" if value is None else _token_text(path, key, value)


def _token_text(path: Path, key: str, value: object) -> str:
    # tokens are plain strings or AddedToken dicts: {"__type": "AddedToken", "content": ...}
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        raise TemplateConfigError(
            f"tokenizer config {path}: {key} must be a string or an AddedToken"
        )
    return value


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TemplateConfigError(f"cannot read {what} {path}: {reason}") from exc
