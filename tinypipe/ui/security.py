"""Who may use the web UI: the checks every request passes before any page, file or action is served.

- **Host**: a UI bound to this machine (127.0.0.1, the default) answers only requests addressed to a local host
  name (`127.0.0.1`, `localhost`, `::1`), so a web page that points another name at 127.0.0.1 (DNS rebinding)
  cannot read it.
- **Token**: with `--auth`, every request carries the token: as `Authorization: Bearer TOKEN`, as the cookie the
  page sets, or once as `?token=TOKEN` in the link `tinypipe ui` prints (answered with that cookie and a redirect
  to the same address without the token). Anything else is refused with 401, before any route runs.
- **Origin**: a form sent from another site (cross-site request forgery) is refused with 403: a browser names the
  page a POST comes from in its `Origin` header, and it must be this UI's own address.
"""

import ipaddress
import secrets
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

__all__ = ["AccessPolicy", "is_local_host", "new_token"]

COOKIE = "tinypipe_ui_token"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_local_host(host: str) -> bool:
    """True for an address only this machine reaches: `localhost`, `127.x.y.z`, `::1`."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh random access token (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


def _host_name(host_header: str) -> str:
    """`127.0.0.1:7860` -> `127.0.0.1`, `[::1]:7860` -> `::1`."""
    return (urlsplit(f"//{host_header}").hostname or "").lower()


@dataclass(frozen=True)
class AccessPolicy:
    """The access rules of one UI server.

    Args:
        token: The access token every request must carry; None: no token (only for a UI bound to this machine).
        local_only: Answer only requests addressed to a local host name (the UI is bound to this machine).
    """

    token: Optional[str] = None
    local_only: bool = True

    def refusal(self, request: Request) -> Optional[Response]:
        """The response that refuses `request`, or None when it may be served."""
        host = request.headers.get("host", "")
        # 1. The host the request is addressed to.
        if self.local_only and not is_local_host(_host_name(host)):
            return HTMLResponse(_page("Wrong address", f"This tinypipe UI answers at 127.0.0.1 or localhost, not at "
                                      f"{host!r}; open http://127.0.0.1:{request.url.port or 80}/ instead."), 400)
        # 2. The access token.
        if self.token is not None:
            given = request.query_params.get("token")
            if given is not None and _same(given, self.token) and request.method in _SAFE_METHODS:
                response = RedirectResponse(request.url.remove_query_params("token"), 303)
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
                return response
            if not self._carries_token(request):
                return HTMLResponse(_page("Access token needed", "This tinypipe UI needs its access token: open the link "
                                          "`tinypipe ui` printed when it started (it ends in ?token=...), or send the "
                                          "header Authorization: Bearer TOKEN."), 401,
                                    headers={"WWW-Authenticate": "Bearer"})
        # 3. The page a form was sent from.
        if request.method not in _SAFE_METHODS:
            origin = request.headers.get("origin")
            if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
                return HTMLResponse(_page("Refused", f"A form from {origin} may not act on this tinypipe UI; use the UI's "
                                          "own pages."), 403)
        return None

    def _carries_token(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        candidates = [request.cookies.get(COOKIE), header[7:] if header.lower().startswith("bearer ") else None]
        return any(candidate is not None and _same(candidate, self.token) for candidate in candidates)


def _same(given: str, token: str) -> bool:
    """Compare in constant time (any text: `compare_digest` on str takes ASCII only)."""
    return secrets.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def _page(title: str, text: str) -> str:
    from html import escape

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tinypipe: {escape(title)}</title></head>"
            f"<body style='font-family: sans-serif; margin: 3em'><h1>{escape(title)}</h1><p>{escape(text)}</p></body></html>")
