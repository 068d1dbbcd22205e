"""Without API keys (issue 19, N5/N6), on a real `paris api`: X-Forwarded-For names the client
only from a trusted proxy (it neither dodges the per-client limit nor names a Redis key), Host
must name this server (DNS rebinding), and a cross-site POST creates nothing (CSRF)."""

import httpx
import pytest


@pytest.fixture(scope="module")
def stack(make_module_stack):
    s = make_module_stack(max_active_jobs_per_key=1)
    s.start_api()
    return s


def post(url, **headers):
    return httpx.post(url + "/v1/videos", data={"prompt": "a"}, headers=headers, timeout=30)


def test_forwarded_for_does_not_dodge_the_per_client_limit_nor_name_a_key(stack):
    assert post(stack.url, **{"X-Forwarded-For": "198.51.100.1"}).status_code == 200
    r = post(stack.url, **{"X-Forwarded-For": "any string: becomes a key?"})
    assert r.status_code == 429, r.text  # the same client (the peer), whatever it claims
    keys = stack.redis().keys(f"{stack.prefix}:client:*")
    assert keys == [f"{stack.prefix}:client:127.0.0.1:active"], keys


def test_a_trusted_proxy_names_the_client_and_only_by_address(make_stack):
    s = make_stack(max_active_jobs_per_key=1, trusted_proxies="127.0.0.1/32")
    s.start_api()
    assert post(s.url, **{"X-Forwarded-For": "198.51.100.1"}).status_code == 200
    assert post(s.url, **{"X-Forwarded-For": "198.51.100.2"}).status_code == 200  # another client behind the proxy
    assert post(s.url, **{"X-Forwarded-For": "198.51.100.1"}).status_code == 429  # ... its limit holds
    assert post(s.url, **{"X-Forwarded-For": "../../etc"}).status_code == 200  # not an address: the proxy itself
    names = sorted(k.split(":")[2] for k in s.redis().keys(f"{s.prefix}:client:*"))
    assert names == ["127.0.0.1", "198.51.100.1", "198.51.100.2"], names


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.2", "[::2]:8000"])
def test_a_host_this_server_is_not_is_a_400_naming_host(stack, host):
    r = httpx.get(stack.url + "/v1/videos", headers={"Host": host})
    assert r.status_code == 400 and r.json()["error"]["param"] == "Host", r.text


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}])
def test_a_cross_site_post_creates_nothing(stack, headers):
    before = len(httpx.get(stack.url + "/v1/videos").json()["data"])
    r = httpx.post(stack.url + "/v1/videos", data={"prompt": "a"}, headers={**headers, "X-Forwarded-For": "x"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_request", r.text
    assert len(httpx.get(stack.url + "/v1/videos").json()["data"]) == before


def test_same_origin_pages_and_plain_clients_still_work(stack):
    job = httpx.get(stack.url + "/v1/videos").json()["data"][0]["id"]
    port = stack.url.rsplit(":", 1)[1]
    for headers in ({"Origin": stack.url, "Sec-Fetch-Site": "same-origin"}, {"Host": f"localhost:{port}"}, {}):
        r = httpx.post(f"{stack.url}/v1/videos/{job}/cancel", headers=headers)
        assert r.status_code in (200, 409), r.text  # reached the route


def test_with_keys_neither_check_applies(make_stack):
    s = make_stack(api_keys=["pk-guard"])
    s.start_api()
    r = httpx.get(s.url + "/v1/models", headers={"Host": "api.example.com", "Authorization": "Bearer pk-guard"})
    assert r.status_code == 200
