"""Credentials hidden in free text: command lines, extra arguments, URLs.

Fields marked `secret` are redacted whole (`settings_to_dict`); but an operator also writes keys
where no schema can mark them: `--api-key sk-...` in a server command, `hf_...` in `extra_args`,
`https://user:pass@host` in a base URL. Everything published (the retained `config`,
`config/get`, `check-config`) passes through here, so such a key never reaches MQTT or a log.
"""

from __future__ import annotations

import re
from typing import Any

from agent.config.problems import REDACTED

# Well-known token shapes (OpenAI sk-/sk-proj-, Anthropic sk-ant-, Hugging Face hf_, GitHub,
# Slack, AWS access key ids, JWTs, Bearer headers).
_TOKENS = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]+)"
    r"|(?<=Bearer )[A-Za-z0-9._~+/\-]{8,}=*")
# scheme://user:password@host or scheme://token@host: the whole userinfo goes.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s?#]+@")
# A flag naming a credential: `--api-key=VALUE`, `-password=VALUE`, `token: VALUE` ...
_NAMED = re.compile(r"(?i)^(-{0,2}[a-z0-9_\-]*(?:key|token|secret|passw(?:or)?d|pass|auth|credential)"
                    r"[a-z0-9_\-]*[=:])(.+)$")
_FLAG = re.compile(r"(?i)^-{1,2}[a-z0-9_\-]*(?:key|token|secret|passw(?:or)?d|pass|auth|credential)[a-z0-9_\-]*$")


def redact_text(text: str) -> str:
    """`text` with every credential-shaped part replaced by '***'."""
    named = _NAMED.match(text)
    if named:
        return named.group(1) + REDACTED
    text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    return _TOKENS.sub(REDACTED, text)


def redact_list(items: list[Any]) -> list[Any]:
    """A command line: each item redacted, and the value after a credential flag (`--api-key X`)."""
    out: list[Any] = []
    after_flag = False
    for item in items:
        if not isinstance(item, str):
            out.append(item)
            after_flag = False
            continue
        out.append(REDACTED if after_flag else redact_text(item))
        after_flag = bool(_FLAG.match(item))
    return out


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return redact_list(value)
    return value
