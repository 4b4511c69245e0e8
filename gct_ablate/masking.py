"""Passwords out of everything the tool prints or stores: one function, :func:`mask`.

It masks every form libpq and SQLAlchemy accept for a password in a URL: ``user:password@``
(also an empty user, ``@`` and ``:`` in the password, percent-encoded ones) and a query or
conninfo keyword (``?password=...``, ``sslpassword=``, ``passwd=``, tokens and secrets),
anywhere in a line of text. :func:`strip_password` gives the URL without them, the form that
is stored (a worker then takes the password from ``~/.pgpass``, ``PGPASSWORD`` or its own
``--tracking-uri``).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
_KEYWORD = re.compile(
    r"((?:^|(?<=[\s?&;,(\"']))[A-Za-z_%0-9]+\s*=\s*)('[^']*'|[^&\s;,)'\"]*)")


def _secret_key(key: str) -> bool:
    name = unquote(key).strip().lower().rstrip("=").strip()
    return bool(re.fullmatch(r"[a-z_0-9]*(pass(word|wd)?|pwd|secret|token|api_?key)[a-z_0-9]*",
                             name))


def _mask_userinfo(url: str, replacement: str | None) -> str:
    """The password of ``scheme://user:password@host...`` replaced (None: removed with its
    colon). The user info runs to the last ``@`` before the query, so ``@`` and ``:`` in an
    unescaped password stay inside it."""
    scheme, _, rest = url.partition("://")
    query = rest.find("?")
    at = rest.rfind("@", 0, query if query >= 0 else len(rest))
    if at < 0 and query >= 0:  # a '?' inside the password: the last '@' anywhere
        at = rest.rfind("@")
    if at < 0:
        return url
    userinfo, host = rest[:at], rest[at:]
    user, colon, _ = userinfo.partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}{'' if replacement is None else ':' + replacement}{host}"


def _mask_keywords(text: str, replacement: str | None) -> str:
    def sub(m: re.Match[str]) -> str:
        if not _secret_key(m.group(1)):
            return m.group(0)
        return f"{m.group(1)}{MASK}" if replacement is not None else ""

    return _KEYWORD.sub(sub, text)


def mask(text: str) -> str:
    """``text`` with every password in it replaced by ``***``: URLs (user info and query) and
    ``password=`` keywords; the rest unchanged."""
    if not text:
        return text
    masked = _URL.sub(lambda m: _mask_userinfo(m.group(0), MASK), str(text))
    return _mask_keywords(masked, MASK)


def check_url(url: str) -> str:
    """``url``, or a one-line UsageError when its password holds an unescaped ``@`` (drivers
    would read the rest of the password as the host name, and print it)."""
    from gct_ablate.errors import UsageError

    scheme, sep, rest = url.partition("://")
    query = rest.find("?")
    userinfo = rest[:rest.rfind("@", 0, query if query >= 0 else len(rest))]
    if sep and "@" in userinfo:
        raise UsageError(f"the password in {mask(url)} holds an unescaped '@'; write it as "
                         "%40 (or keep it out of the URL: ~/.pgpass, PGPASSWORD)")
    return url


def strip_password(url: str) -> str:
    """``url`` without its password (user info and query keywords): the form to store."""
    if not url:
        return url
    bare = _mask_userinfo(url, None)
    scheme, sep, rest = bare.partition("://")
    base, q, query = rest.partition("?")
    if q:
        kept = [p for p in query.split("&") if p and not _secret_key(p.partition("=")[0])]
        rest = base + ("?" + "&".join(kept) if kept else "")
    return f"{scheme}{sep}{rest}"
