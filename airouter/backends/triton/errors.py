"""Triton's failures (gRPC status codes, in-band error text) as the errors a client sees."""

from __future__ import annotations

import logging
import re

import grpc

from airouter.backends.triton import h2frames as h2
from airouter.bounds import escaped
from airouter.errors import (
    BadGateway,
    GatewayTimeout,
    InvalidRequest,
    RouterError,
    ServiceUnavailable,
)

log = logging.getLogger("airouter.triton")


# Decoupled streams report failures as bare text. Words that only an engine or server fault
# uses win; then words that say the request itself was wrong; anything else is the backend's
# fault (502, retried on another node before the first byte, counted against the node).
_ENGINE_FAULT = re.compile(
    r"out of memory|\boom\b|cuda|cudnn|cublas|nccl|segmentation fault|core dumped|"
    r"engine (?:is )?(?:dead|stopped|failed)|executor|internal error|assertion",
    re.IGNORECASE,
)
_CLIENT_FAULT = re.compile(
    r"invalid (?:argument|input|value|parameter|request)|"
    r"too (?:long|large|high|low|many|big)|exceeds?|max(?:imum)?[ _](?:length|input|seq)|"
    r"input length|prompt length|context length|"
    r"unexpected (?:inference )?input|missing (?:required )?input|expected \d+ inputs?|"
    r"shape|data ?type|dtype|must be|out of range|not supported|unsupported",
    re.IGNORECASE,
)


def map_error(message: str, model: str) -> RouterError:
    """Triton's in-band error text to the status a client should see."""
    low = message.lower()
    if "unknown model" in low or ("is not found" in low and "model" in low):
        # Retryable: another node may serve it (a stopping server unloads its models first).
        return BadGateway(
            f"The Triton server does not serve the model '{model}'.",
            code="backend_model_not_found",
            retryable=True,
        )
    if "unavailable" in low or "not ready" in low:
        return ServiceUnavailable(f"The model '{model}' is unavailable: {message}")
    if _CLIENT_FAULT.search(message) and not _ENGINE_FAULT.search(message):
        return InvalidRequest(f"The model rejected the request: {message}",
                              code="backend_rejected")
    log.warning("model %s failed: %s", model,
                escaped(message))
    return BadGateway(f"The model '{model}' failed on the backend.", code="backend_failed",
                      retryable=True)


def map_rpc_error(e: grpc.aio.AioRpcError, url: str, model: str,
                  deadline: str = "its request_timeout") -> RouterError:
    """`deadline`: the call's gRPC deadline, in words (what a DEADLINE_EXCEEDED names)."""
    code = e.code()
    return map_status(code.value[0], e.details() or str(code), url, model, deadline)


# gRPC status codes by number, as the wire client names them (grpc.StatusCode's values).
_REJECTED = (h2.INVALID_ARGUMENT, h2.FAILED_PRECONDITION, h2.OUT_OF_RANGE)


def map_status(code: int, details: str, url: str, model: str,
               deadline: str = "its request_timeout") -> RouterError:
    """A call's gRPC status (its number and text) as the error a client sees."""
    if code == h2.DEADLINE_EXCEEDED:
        return GatewayTimeout(f"The Triton server at {url} did not answer within {deadline}.")
    if code == h2.UNAVAILABLE:
        return BadGateway(f"Could not reach the Triton server at {url}.", retryable=True)
    if code == h2.RESOURCE_EXHAUSTED:
        return ServiceUnavailable(f"The Triton server at {url} is overloaded.")
    if code in _REJECTED:
        return InvalidRequest(f"The model rejected the request: {details}",
                              code="backend_rejected")
    return map_error(details or f"gRPC status {code}", model)
