"""Field checks shared by the request translators: each failure names the client's own `param`."""

from __future__ import annotations

from typing import Any

import msgspec

from airouter.errors import InvalidRequest

_decode_any = msgspec.json.Decoder().decode


def parse_object(data: bytes) -> dict[str, Any]:
    try:
        body = _decode_any(data)
    except msgspec.DecodeError as e:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {e}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def invalid(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {message}", param=param,
                          code="invalid_value")


def unsupported(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="unsupported_parameter")


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                          code="missing_required_parameter")


def string(v: Any, param: str, *, required: bool = False) -> str | None:
    if v is None:
        if required:
            raise missing(param)
        return None
    if not isinstance(v, str):
        raise invalid(param, "expected a string.")
    return v


def obj(v: Any, param: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise invalid(param, "expected an object.")
    return v


def array(v: Any, param: str) -> list[Any]:
    if not isinstance(v, list):
        raise invalid(param, "expected an array.")
    return v


def boolean(v: Any, param: str) -> bool | None:
    if v is not None and not isinstance(v, bool):
        raise invalid(param, "expected a boolean.")
    return v


def number(v: Any, param: str, lo: float, hi: float) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise invalid(param, f"expected a number from {lo:g} to {hi:g}.")
    return v


def integer(v: Any, param: str, lo: int = 1) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise invalid(param, f"expected an integer of at least {lo}.")
    return v


def check_known(body: dict[str, Any], known: frozenset[str], where: str = "") -> None:
    """A field the router cannot honour is refused rather than silently dropped."""
    for k in body:
        if k not in known:
            param = f"{where}.{k}" if where else k
            raise unsupported(param, f"Unsupported parameter: '{param}'.")
