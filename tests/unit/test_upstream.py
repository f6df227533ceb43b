"""Which proxy an upstream gets (curl's environment rules) and how a base URL's path and query
are encoded."""

from __future__ import annotations

import pytest

from airouter.upstream import Proxy, bypassed, choose_proxy, quoted_path, quoted_query


@pytest.mark.parametrize(("host", "no_proxy", "expected"), [
    ("api.example.com", "example.com", True),
    ("api.example.com", ".example.com", True),
    ("example.com", ".example.com", True),
    ("EXAMPLE.com.", "example.COM", True),
    ("notexample.com", "example.com", False),
    ("example.com", "api.example.com", False),
    ("anything", "*", True),
    ("anything", "a.test, *", False),  # `*` matches all only alone, as curl reads it
    ("10.1.2.3", "10.0.0.0/8", True),
    ("10.1.2.3", "10.1.2.3", True),
    ("11.1.2.3", "10.0.0.0/8", False),
    ("::1", "::1", True),
    ("[::1]", "[::1]", True),
    ("127.0.0.1", "localhost", False),  # no resolving: an address matches addresses only
    ("localhost", "", False),
    ("a.test", "b.test  a.test", True),
])
def test_no_proxy_matches_as_curl_does(host: str, no_proxy: str, expected: bool) -> None:
    assert bypassed(host, no_proxy) is expected


def test_the_environment_per_scheme() -> None:
    env = {"HTTPS_PROXY": "http://u:p@secure:3128", "http_proxy": "plain:8080",
           "NO_PROXY": "internal.test"}
    assert choose_proxy("https://api.test/v1", None, env) == \
        Proxy("secure", 3128, "Basic dTpw")
    assert choose_proxy("http://api.test/v1", None, env) == Proxy("plain", 8080)
    assert choose_proxy("https://x.internal.test/v1", None, env) is None
    assert choose_proxy("https://api.test/v1", None, {"ALL_PROXY": "http://all:1"}) == \
        Proxy("all", 1)
    assert choose_proxy("https://api.test/v1", None, {}) is None
    # lower case first, as curl reads them
    assert choose_proxy("https://a.test", None, {"https_proxy": "http://low:1",
                                                 "HTTPS_PROXY": "http://up:1"}) == Proxy("low", 1)


def test_the_setting_wins_and_empty_means_none() -> None:
    env = {"HTTPS_PROXY": "http://env:1"}
    assert choose_proxy("https://a.test", "", env) is None
    assert choose_proxy("https://a.test", "http://mine:2", env) == Proxy("mine", 2)
    with pytest.raises(ValueError, match="not a valid") as e:
        choose_proxy("https://a.test", None, {"HTTPS_PROXY": "socks5://u:secret@s:1"})
    assert "secret" not in str(e.value)
    assert "secret" not in repr(Proxy("h", 1, "Basic c2VjcmV0"))


def test_path_and_query_encoding() -> None:
    assert quoted_path("/a b/é/%20/%2F/~x:y@z") == "/a%20b/%C3%A9/%20/%2F/~x:y@z"
    assert quoted_query("api-version=2024-06-01&q=a b") == "api-version=2024-06-01&q=a%20b"
