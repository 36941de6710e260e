"""The pages' side of the API key, and their guard against other sites' forms.

With a key set, a browser signs in once on `/login`, which stores the key in an HttpOnly,
SameSite=Strict cookie; a request carrying that cookie (a page, or a page's own call to
`/v1/...`) is handed to `serve`'s key check as if it had sent `Authorization: Bearer <key>`, so
there is one check, not two. A page asked for without a valid key is redirected to the sign-in
form instead of getting the API's JSON 401.

Pages change state only by POST (start, cancel, export, upload), and a POST to a page whose
`Origin` is another site is refused: with no key set (localhost), any web page the user visits
could otherwise post a form to the studio.
"""

from __future__ import annotations

import hmac
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse

COOKIE = "tunewright_key"
LOGIN = "/login"
# Served without a key: the sign-in form itself, and the stylesheet and script it uses.
STATIC_PREFIX = "/static/"


def is_public(path: str) -> bool:
    """Served without the API key (serve's `/health` too)."""
    return path in ("/health", LOGIN) or path.startswith(STATIC_PREFIX)


def valid_key(given: str | None, key: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), key.encode())


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from a page of another site."""
    origin = request.headers.get("origin")
    if not origin:  # not sent by browsers on same-origin GETs, nor by scripts and tests
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def add_cookie_auth(app: FastAPI, api_key: str | None) -> None:
    """Refuse cross-site form posts; with a key, turn the sign-in cookie into a bearer key and
    send key-less page requests to /login."""

    @app.middleware("http")
    async def page_guard(request: Request, call_next):
        path = request.url.path
        is_page = not path.startswith("/v1/") and not is_public(path)
        if is_page and request.method != "GET" and not same_origin(request):
            return PlainTextResponse("cross-site form posts are refused", status_code=403)
        if not api_key:
            return await call_next(request)
        cookie = request.cookies.get(COOKIE)
        has_header = any(k == b"authorization" for k, _ in request.scope["headers"])
        if cookie and not has_header:
            # serve's key check (a middleware inside this one) reads the header from this scope
            request.scope["headers"] = [
                *request.scope["headers"],
                (b"authorization", f"Bearer {cookie}".encode("latin-1", "replace")),
            ]
        if is_page and not has_header and not valid_key(cookie, api_key):
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{LOGIN}?next={quote(target)}", status_code=303)
        return await call_next(request)
