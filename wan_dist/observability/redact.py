"""Secrets never reach a file we write: config.yaml, sidecars, the ledger, the W&B config.

Three rules, applied recursively to dicts / lists / strings:
1. a value whose *key* looks secret (api_key, token, secret, password, credential, ...) is replaced;
2. `key=value` strings (argv overrides) with such a key are replaced the same way;
3. the *values* of secret-looking environment variables (WANDB_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...) and
   well-known token shapes (hf_..., sk-..., ghp_..., xox?-...) are cut out of any string, wherever they appear.
"""
from __future__ import annotations

import os
import re

REDACTED = "***REDACTED***"
SECRET_KEY_RE = re.compile(r"(api[_-]?key|apikey|token|secret|passw(or)?d|credential|private[_-]?key|auth"
                           r"|access[_-]?key|session[_-]?key|signature)", re.IGNORECASE)
TOKEN_SHAPES = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
                          r"|xox[abpors]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})\b")
_MIN_SECRET_LEN = 6  # shorter env values ("1", "true") would redact innocent text


def is_secret_key(key) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY_RE.search(key))


def secret_env_values(environ=None) -> list[str]:
    env = os.environ if environ is None else environ
    vals = {v for k, v in env.items() if is_secret_key(k) and isinstance(v, str) and len(v) >= _MIN_SECRET_LEN}
    return sorted(vals, key=len, reverse=True)  # longest first: a secret containing another is cut whole


def _sub(pattern: re.Pattern, s: str, literals: tuple) -> str:
    """pattern -> REDACTED, except a match lying wholly inside an occurrence of a literal (data, e.g. an item id)."""
    spans = [(m.start(), m.end()) for x in literals if x for m in re.finditer(re.escape(x), s)]
    return pattern.sub(lambda m: m.group(0) if any(a <= m.start() and m.end() <= b for a, b in spans) else REDACTED,
                       s)


def _scrub_str(s: str, secrets: list[str], literals: tuple = ()) -> str:
    for v in secrets:
        if v in s:
            s = _sub(re.compile(re.escape(v)), s, literals) if literals else s.replace(v, REDACTED)
    s = _sub(TOKEN_SHAPES, s, literals) if literals else TOKEN_SHAPES.sub(REDACTED, s)
    m = re.match(r"^([+~]*)([^=\s]+)=(.*)$", s, re.DOTALL)  # an argv override key=value
    if m and is_secret_key(m.group(2).split(".")[-1]) and m.group(3) not in ("", "null", "None"):
        s = f"{m.group(1)}{m.group(2)}={REDACTED}"
    return s


def redact(obj, environ=None, _secrets=None, keep: tuple = (), literals: tuple = ()):
    """A copy of `obj` (JSON-like) with secrets replaced by ***REDACTED***.

    `keep`: top-level keys whose values are data and pass unchanged (an item's id: an id that happens to look like a
    token is what the user named the item, and resume must recognise it). `literals`: strings that are data wherever
    they appear (the same id inside `videos/<id>.mp4`); the text around them is still scrubbed."""
    secrets = secret_env_values(environ) if _secrets is None else _secrets
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in keep:
                out[k] = v
            elif is_secret_key(k) and v not in (None, "", False):
                out[k] = REDACTED
            else:
                out[k] = redact(v, _secrets=secrets, literals=literals)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v, _secrets=secrets, literals=literals) for v in obj]
    if isinstance(obj, str):
        return _scrub_str(obj, secrets, literals)
    return obj
