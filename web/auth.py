"""Bearer-token access: ``Authorization: Bearer <token>`` or the login form's HttpOnly cookie.

Without a configured token (``GLIOMASEG_WEB__TOKEN``) the web must not be open: a random token
is generated once, kept in ``<spool>/web_token`` (mode 0600) so restarts keep it, and printed
to the console (stderr, never the JSON log) when the app starts.
"""

from __future__ import annotations

import hmac
import os
import secrets
import sys
from pathlib import Path

from fastapi import HTTPException, Request, status

COOKIE = "gliomaseg_token"
TOKEN_FILE = "web_token"


def resolve_token(configured: str | None, spool_root: Path, *, announce: bool = True) -> str:
    """The token to require: the configured one, else the spool's generated one."""
    if configured:
        return configured
    path = Path(spool_root) / TOKEN_FILE
    if path.is_file():
        token = path.read_text().strip()
        created = False
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        created = True
    if announce:
        what = "generated" if created else "kept in"
        sys.stderr.write(
            f"gliomaseg web: GLIOMASEG_WEB__TOKEN is not set; access token ({what} {path}): {token}\n"
        )
        sys.stderr.flush()
    return token


def presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE)


def is_signed_in(request: Request) -> bool:
    expected: str = request.app.state.token
    given = presented_token(request)
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def require_token(request: Request) -> None:
    """FastAPI dependency for the API: 401 unless the bearer token (or cookie) matches."""
    if not is_signed_in(request):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="a valid token is required: header 'Authorization: Bearer <GLIOMASEG_WEB__TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


class LoginRequired(Exception):
    """Raised by page dependencies; the app turns it into a redirect to /login."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def require_login(request: Request) -> None:
    """FastAPI dependency for pages: redirect to the login form unless signed in."""
    if not is_signed_in(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
