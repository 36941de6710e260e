"""The pages' side of the API key: with a key set, a browser signs in once on `/login`, which
stores the key in an HttpOnly, SameSite=Strict cookie; every request carrying that cookie (pages,
and the pages' own calls to `/v1/...`) is then handed to `serve`'s key check as if it had sent
`Authorization: Bearer <key>`, so there is one check, not two. A page requested without a valid
key is redirected to the sign-in form instead of getting the API's JSON 401.

SameSite=Strict keeps other sites from posting forms with the cookie (no CSRF tokens needed).
"""

from __future__ import annotations

import hmac
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

COOKIE = "tunewright_key"
LOGIN = "/login"
# Paths served without a key: the sign-in form itself and the stylesheet it uses.
PUBLIC_PREFIXES = (LOGIN, "/static/")


def is_public(path: str) -> bool:
    return path == "/health" or path.startswith(PUBLIC_PREFIXES)


def valid_key(given: str | None, key: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), key.encode())


def add_cookie_auth(app: FastAPI, api_key: str | None) -> None:
    """Translate the sign-in cookie into a bearer key; send key-less page requests to /login."""
    if not api_key:
        return

    @app.middleware("http")
    async def cookie_key(request: Request, call_next):
        path = request.url.path
        cookie = request.cookies.get(COOKIE)
        has_header = any(k == b"authorization" for k, _ in request.scope["headers"])
        if cookie and not has_header:
            # serve's middleware (inside this one) reads the header from the same scope
            request.scope["headers"] = [
                *request.scope["headers"],
                (b"authorization", f"Bearer {cookie}".encode("latin-1", "replace")),
            ]
        if not path.startswith("/v1/") and not is_public(path) and not has_header:
            if not valid_key(cookie, api_key):
                target = path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"{LOGIN}?next={quote(target)}", status_code=303)
        return await call_next(request)
