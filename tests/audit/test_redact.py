from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import date
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sidecar.audit.redact import BUILTIN_KINDS, RedactionSettings, Redactor, Replacement

CORPUS = Path(__file__).parent / "corpus" / "redact"
KEY = b"k" * 32
OTHER_KEY = b"o" * 32

# Hypothesis runs in CI on every push: enough examples to find boundary bugs, few enough to
# keep the file under a few seconds; no deadline because the first calls warm the regex cache.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN = re.compile(r"\[REDACTED:[a-z_]+\]|\[[a-z_]+:[0-9a-f]{16}\]")


# --- values built the way issuers build them -------------------------------------------------

_PRC_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def prc_id(region: str, born: str, sequence: str) -> str:
    """An 18-character PRC resident id with its ISO 7064 MOD 11-2 check character."""
    body = region + born + sequence
    assert len(body) == 17
    return body + "10X98765432"[sum(int(char) * weight for char, weight in zip(body, _PRC_WEIGHTS, strict=True)) % 11]


def with_wrong_check(identifier: str) -> str:
    check = identifier[-1].upper()
    return identifier[:-1] + ("1" if check != "1" else "2")


def luhn_complete(partial: str) -> str:
    """`partial` plus the check digit that makes it pass Luhn."""
    total = 0
    for position, char in enumerate(reversed(partial)):
        value = int(char)
        if position % 2 == 0:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return partial + str(-total % 10)


def luhn_valid(number: str) -> bool:
    return luhn_complete(number[:-1]) == number


def luhn_breaks(number: str) -> str:
    return number[:-1] + str((int(number[-1]) + 1) % 10)


def grouped(digits: str, sizes: tuple[int, ...], separator: str) -> str:
    parts, position = [], 0
    for size in sizes:
        parts.append(digits[position : position + size])
        position += size
    return separator.join(parts)


VALID_IDS = [
    prc_id("110105", "19900307", "123"),
    prc_id("440305", "19881212", "345"),  # check character X
    prc_id("310104", "19750615", "002"),
    prc_id("330106", "19920229", "456"),  # a leap day
    prc_id("510107", "20010101", "888"),
]
assert VALID_IDS[1].endswith("X")

VISA = luhn_complete("411111111111111")
MASTERCARD = luhn_complete("555555555555444")
AMEX = luhn_complete("37828224631000")
DISCOVER = luhn_complete("601111111111111")
UNIONPAY = luhn_complete("620000000000000")
JCB = luhn_complete("353011133330000")
DINERS = luhn_complete("3056930902590")
assert VISA == "4111111111111111" and AMEX == "378282246310005"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JWT = ".".join(
    [
        b64url(b'{"alg":"HS256","typ":"JWT"}'),
        b64url(b'{"sub":"user-42","exp":1714567890}'),
        b64url(hashlib.sha256(b"signature").digest()),
    ]
)


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(RedactionSettings(ip_address=True))


def keyed(key: bytes = KEY, **options: object) -> Redactor:
    return Redactor(RedactionSettings(replacement=Replacement.KEYED_HASH, hash_key=key, **options))  # type: ignore[arg-type]


def hmac16(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]


def assert_masked(redactor: Redactor, text: str, secret: str, kind: str) -> str:
    out = redactor.text(text)
    assert secret not in out, out
    assert f"[REDACTED:{kind}]" in out, out
    assert kind in {found[0] for found in redactor.findings(text)}
    return out


# --- personal data: positives ----------------------------------------------------------------

PERSONAL_POSITIVES = [
    # (text, value that must disappear, kind)
    *[(f"citizen id {value} on file", value, "national_id") for value in VALID_IDS],
    (f"lower-case check char {VALID_IDS[1].lower()}.", VALID_IDS[1].lower(), "national_id"),
    (f"身份证号{VALID_IDS[0]}请核对", VALID_IDS[0], "national_id"),
    ("ssn 123-45-6789", "123-45-6789", "national_id"),
    ("ssn: 078-05-1120;", "078-05-1120", "national_id"),
    (f"visa {VISA}", VISA, "credit_card"),
    (f"visa {grouped(VISA, (4, 4, 4, 4), ' ')} exp 12/27", grouped(VISA, (4, 4, 4, 4), " "), "credit_card"),
    (f"mc {grouped(MASTERCARD, (4, 4, 4, 4), '-')}", grouped(MASTERCARD, (4, 4, 4, 4), "-"), "credit_card"),
    (f"amex {grouped(AMEX, (4, 6, 5), ' ')}", grouped(AMEX, (4, 6, 5), " "), "credit_card"),
    (f"amex {AMEX}", AMEX, "credit_card"),
    (f"discover {DISCOVER}", DISCOVER, "credit_card"),
    (f"unionpay {UNIONPAY}", UNIONPAY, "credit_card"),
    (f"jcb {JCB}", JCB, "credit_card"),
    (f"diners {DINERS}", DINERS, "credit_card"),
    ('{"card": "' + VISA + '"}', VISA, "credit_card"),
    ("call 13812345678 now", "13812345678", "phone"),
    ("我的手机号是13812345678，谢谢", "13812345678", "phone"),
    ("tel +8613912345678", "+8613912345678", "phone"),
    ("tel +86 139 1234 5678", "139 1234 5678", "phone"),
    ("tel +86-139-1234-5678", "139-1234-5678", "phone"),
    ("tel 0086 15012345678", "15012345678", "phone"),
    ("tel 186-0755-1234", "186-0755-1234", "phone"),
    ("us +1 (415) 555-0132 office", "555-0132", "phone"),
    ("uk +44 20 7946 0958", "7946 0958", "phone"),
    ("de +49-30-901820", "901820", "phone"),
    ("intl +12025550143.", "+12025550143", "phone"),
    ("mail john.doe@example.com today", "john.doe@example.com", "email"),
    ("mail John.Doe+invoices@mail.eu.example.co.uk", "John.Doe+invoices@mail.eu.example.co.uk", "email"),
    ("<li_wei-88@sub.domain.example.cn>", "li_wei-88@sub.domain.example.cn", "email"),
    ("mailto:ops@example.org?subject=hi", "ops@example.org", "email"),
    ("邮箱：zhang.san@example.com.cn。", "zhang.san@example.com.cn", "email"),
    ("client 203.0.113.77 connected", "203.0.113.77", "ip"),
    ("peer=10.0.0.1:8080", "10.0.0.1", "ip"),
    ("via 2001:db8:85a3::8a2e:370:7334 ok", "2001:db8:85a3::8a2e:370:7334", "ip"),
    ("[fe80::1ff:fe23:4567:890a]:443", "fe80::1ff:fe23:4567:890a", "ip"),
    ("mapped ::ffff:192.168.1.20", "192.168.1.20", "ip"),
]


@pytest.mark.parametrize(("text", "secret", "kind"), PERSONAL_POSITIVES)
def test_personal_data_is_masked(redactor: Redactor, text: str, secret: str, kind: str) -> None:
    assert_masked(redactor, text, secret, kind)


def test_surrounding_text_is_kept(redactor: Redactor) -> None:
    assert redactor.text(f"id {VALID_IDS[0]}, phone 13812345678.") == (
        "id [REDACTED:national_id], phone [REDACTED:phone]."
    )
    assert redactor.text("我的手机号是13812345678，谢谢") == "我的手机号是[REDACTED:phone]，谢谢"


# --- personal data: negatives ----------------------------------------------------------------

PERSONAL_NEGATIVES = [
    # PRC ids with a wrong check character, an impossible or future birth date
    *[f"id {with_wrong_check(value)}" for value in VALID_IDS],
    f"id {prc_id('110105', '19900230', '123')}",
    f"id {prc_id('110105', '18991231', '123')}",
    f"id {prc_id('110108', '20900101', '123')}",
    f"id {prc_id('110108', str(date.today().year + 1) + '0101', '123')}",
    f"id {VALID_IDS[0]}7",  # 19 digits: not an id
    # SSNs in ranges that are never issued
    "ssn 000-12-3456",
    "ssn 666-12-3456",
    "ssn 912-34-5678",
    "ssn 123-00-4567",
    "ssn 123-45-0000",
    "part 0123-45-6789-01",
    # cards that fail Luhn, or that no scheme issues
    f"card {luhn_breaks(VISA)}",
    f"card {grouped(luhn_breaks(MASTERCARD), (4, 4, 4, 4), ' ')}",
    f"card {luhn_breaks(AMEX)}",
    "card 1234567812345670",  # Luhn-valid, but no scheme starts with 1
    "card 4111 1111-1111 1111",  # mixed separators
    # phones that are not phones
    "12812345678",  # no such mobile prefix
    "138123456789",  # 12 digits
    "+1234 short",
    "offset +08:00, +0800",
    "1e+10",
    "c++17",
    "１３８１２３４５６７８",  # full-width digits are left alone
    # almost-emails
    "user@localhost",
    "a@b",
    "pkg@1.2.3",
    "image@sha256:4bf92f3577b34da6",
    "@channel hello",
    # addresses that are not addresses
    "256.1.1.1",
    "01.2.3.4",
    "v1.2.3.4",
    "1.2.3.4.5",
    "12:34:56",
    "mac 00:1A:2B:3C:4D:5E",
    "std::vector<int>",
    "a[1::2]",
    "::1",
    # everyday operational text
    "550e8400-e29b-41d4-a716-446655440000",
    "12345678-1234-1234-1234-123456789012",
    "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7",
    "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "2024-05-01T12:34:56.789+08:00",
    "2024-05-01 12:34:56,789",
    "POST /v1/chat/completions 200",
    "GET /v1/models/glm-4.6v-flash HTTP/1.1",
    "version 1.2.3, python 3.11.9, cuda 12.4",
    "bytes=1048576 total=68719476736 ts_ns=1714567890123456789 ts_ms=1714567890123",
    "status 200 in 1234 ms, 42 tokens, 3 retries",
    "prompt_tokens=512 completion_tokens=128 max_tokens=4096 token_count: 5",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "HTTP Basic authentication failed; Bearer token missing",
    "the session expired; token refresh scheduled; api key rotation_policy_2024_v1 applies",
    "cache key 1234567890123456 and token 0.000123456789012",
    "monkey=banana keyboard=us",
    '{"auth": {"type": "none"}}',
    '{"password": ""}',
    "if key == other:",
]


@pytest.mark.parametrize("text", PERSONAL_NEGATIVES)
def test_lookalikes_are_left_alone(redactor: Redactor, text: str) -> None:
    assert redactor.findings(text) == []
    assert redactor.text(text) == text


def test_disabled_kinds_are_not_masked() -> None:
    nothing = Redactor(
        RedactionSettings(email=False, phone=False, national_id=False, credit_card=False, ip_address=False)
    )
    text = f"{VALID_IDS[0]} 123-45-6789 {VISA} 13812345678 +44 20 7946 0958 a@example.com 10.0.0.1"
    assert nothing.text(text) == text


def test_ip_addresses_are_off_by_default() -> None:
    assert Redactor(RedactionSettings()).text("client 203.0.113.77") == "client 203.0.113.77"


# --- credentials -----------------------------------------------------------------------------

CREDENTIALS = [
    # (text, value that must disappear, kind)
    ("Authorization: Bearer abc", "abc", "secret"),
    ("authorization: Bearer " + "t0k3n" * 8, "t0k3n" * 8, "secret"),
    ("Proxy-Authorization: Basic YWxpY2U6czNjcjN0", "YWxpY2U6czNjcjN0", "secret"),
    ("Authorization: Digest username=alice, response=6629fae49393a05397450978507c4ef1", "6629fae4", "secret"),
    ("curl -H 'Authorization: Bearer tok_12345678' https://api", "tok_12345678", "secret"),
    ("sent Bearer 9f8e7d6c5b4a3210 upstream", "9f8e7d6c5b4a3210", "secret"),
    ("basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA==", "secret"),
    ("Cookie: session=abc; theme=dark", "theme=dark", "secret"),
    ("Set-Cookie: sid=31d4d96e407aad42; Path=/; HttpOnly", "31d4d96e407aad42", "secret"),
    (f"token {JWT} used", JWT, "jwt"),
    (f"id_token={JWT}", JWT, "jwt"),
    ("OPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwxyz012345", "sk-abcdefghijklmnopqrstuvwxyz012345", "api_key"),
    ("key sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34", "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34", "api_key"),
    ("x sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz-0123_45", "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz-0123_45", "api_key"),
    ("aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "api_key"),
    ("aws ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A", "api_key"),
    ("gh ghp_R2d2C3poBb8Ee1Ff0Gg9Hh8Ii7Jj6Kk5Ll4M", "ghp_R2d2C3poBb8Ee1Ff0Gg9Hh8Ii7Jj6Kk5Ll4M", "api_key"),
    ("gh gho_16C7e42F292c6912E7710c838347Ae178B4a", "gho_16C7e42F292c6912E7710c838347Ae178B4a", "api_key"),
    ("gh github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_pat_11ABCDEFG0123456789", "api_key"),
    ("slack xoxb-2048-4096-AbCdEfGhIjKl", "xoxb-2048-4096-AbCdEfGhIjKl", "api_key"),
    ("slack xoxp-1234567890-abcdef", "xoxp-1234567890-abcdef", "api_key"),
    ("maps AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "api_key"),
    ("hf hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "api_key"),
    ("gitlab glpat-xY9zA8bC7dE6fG5hI4jK", "glpat-xY9zA8bC7dE6fG5hI4jK", "api_key"),
    ("stripe sk_live_51HxYzAbCdEfGhIjKlMn0123", "sk_live_51HxYzAbCdEfGhIjKlMn0123", "api_key"),
    ("my token is Qr1FqXSTs98vPlL2aEJX, thanks", "Qr1FqXSTs98vPlL2aEJX", "secret"),
    ("session 8f14e45fceea167a5a36dedd4bea2543 expired", "8f14e45fceea167a5a36dedd4bea2543", "secret"),
    ("postgres://admin:S3cr3t-P4ss@db:5432/app", "S3cr3t-P4ss", "secret"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----", "MIIEowIBAAKCAQEA", "secret"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq (truncated", "MIIEvQIBADANBgkq", "secret"),
]


@pytest.mark.parametrize(("text", "secret", "kind"), CREDENTIALS)
def test_credentials_are_masked(redactor: Redactor, text: str, secret: str, kind: str) -> None:
    assert_masked(redactor, text, secret, kind)


SECRET_PAIRS = [
    # (text, value, text that must stay: the name and what follows the value)
    ("api_key=abc123", "abc123", "api_key="),
    ("apikey: abc123", "abc123", "apikey: "),
    ("x-api-key: abc123", "abc123", "x-api-key: "),
    ("X-API-KEY:abc123", "abc123", "X-API-KEY:"),
    ("key=abc123&model=glm", "abc123", "&model=glm"),
    ("?token=abc123&page=2", "abc123", "&page=2"),
    ("access_token=ya29.a0AfH6SMBx", "ya29.a0AfH6SMBx", "access_token="),
    ("refresh_token = 1//0gLt4pq", "1//0gLt4pq", "refresh_token = "),
    ("secret: hunter2", "hunter2", "secret: "),
    ("client_secret=cs_9Qw8Er7Ty6, next", "cs_9Qw8Er7Ty6", ", next"),
    ("PASSWORD=Winter2024!", "Winter2024!", "PASSWORD="),
    ("passwd: letmein99", "letmein99", "passwd: "),
    ("pwd=abc123; path=/", "abc123", "; path=/"),
    ("auth: s3cr3tv4lue", "s3cr3tv4lue", "auth: "),
    ("signature=9f2c1e0d8b7a", "9f2c1e0d8b7a", "signature="),
    ("sig=9f2c1e0d8b7a", "9f2c1e0d8b7a", "sig="),
    ("session=8f14e45fceea", "8f14e45fceea", "session="),
    ("session_id=8f14e45fceea", "8f14e45fceea", "session_id="),
    ("cookie=a1b2c3d4", "a1b2c3d4", "cookie="),
    ("OPENAI_API_KEY=not-a-known-prefix", "not-a-known-prefix", "OPENAI_API_KEY="),
    ("spring.datasource.password=s3cr3t", "s3cr3t", "spring.datasource.password="),
    ("X-Amz-Signature=abcd1234", "abcd1234", "X-Amz-Signature="),
    ('{"api_key": "abc 123 with spaces", "model": "glm"}', "abc 123 with spaces", '"model": "glm"'),
    ('{"password":"p@ss\\"word"}', 'p@ss\\"word', '{"password":"'),
    ('{"Authorization": "Bearer abc"}', "abc", '{"Authorization": "'),
    ("{'token': 'abc123'}", "abc123", "{'token': '"),
    ('body "{\\"password\\": \\"hunter2\\"}"', "hunter2", '\\"password\\": \\"'),
    ('{"password": "cut off by truncation', "cut off by truncation", '{"password": "'),
    ("password:\thunter2", "hunter2", "password:\t"),
]


@pytest.mark.parametrize(("text", "secret", "kept"), SECRET_PAIRS)
def test_secret_pairs_mask_the_value_and_keep_the_name(redactor: Redactor, text: str, secret: str, kept: str) -> None:
    out = assert_masked(redactor, text, secret, "secret")
    assert kept in out, out


def test_a_cookie_header_is_masked_whole(redactor: Redactor) -> None:
    assert redactor.text("Cookie: a=b; c=d\nHost: x") == "Cookie: [REDACTED:secret]\nHost: x"


def test_credentials_are_masked_whatever_the_settings() -> None:
    nothing = Redactor(
        RedactionSettings(email=False, phone=False, national_id=False, credit_card=False, ip_address=False)
    )
    for text, secret, _ in CREDENTIALS:
        assert secret not in nothing.text(text)
    for text, secret, _ in SECRET_PAIRS:
        assert secret not in nothing.text(text)


def test_credentials_are_tagged_even_under_keyed_hash() -> None:
    redactor = keyed()
    out = redactor.text(f"password=hunter2 {JWT} sk-abcdefghijklmnopqrstuvwxyz012345 a@example.com")
    assert out.startswith("password=[REDACTED:secret] [REDACTED:jwt] [REDACTED:api_key] [email:")


def test_a_credential_wins_over_overlapping_personal_data() -> None:
    # The password looks like an email; it must be tagged as a secret, not hashed as an email.
    redactor = keyed()
    assert redactor.text("password=alice@example.com") == "password=[REDACTED:secret]"
    assert redactor.findings("password=alice@example.com") == [("secret", 9, 26)]


def test_a_jwt_under_a_secret_name_is_reported_as_a_jwt(redactor: Redactor) -> None:
    assert redactor.text(f"id_token={JWT}") == "id_token=[REDACTED:jwt]"


# --- overlaps and findings -------------------------------------------------------------------


def test_findings_are_ordered_and_disjoint(redactor: Redactor) -> None:
    text = f"a@example.com {VISA} 13812345678 {VALID_IDS[0]} password=x"
    found = redactor.findings(text)
    assert [kind for kind, _, _ in found] == ["email", "credit_card", "phone", "national_id", "secret"]
    assert all(end <= start for (_, _, end), (_, start, _) in pairwise(found))
    assert [text[start:end] for _, start, end in found] == [
        "a@example.com",
        VISA,
        "13812345678",
        VALID_IDS[0],
        "x",
    ]


def test_overlapping_findings_merge_so_nothing_of_either_survives(redactor: Redactor) -> None:
    # "567? 4111 1111 1111" is a (Maestro) card too, and the real card starts one group later.
    real = grouped(VISA, (4, 4, 4, 4), " ")
    lead = next(f"567{digit}" for digit in "0123456789" if luhn_valid(f"567{digit}411111111111"))
    text = f"ref {lead} {real} end"
    assert len(redactor.findings(text)) == 1
    out = redactor.text(text)
    assert out.startswith("ref [REDACTED:credit_card]") and out.endswith(" end")
    assert "1111" not in out


def test_an_over_long_grouped_card_keeps_the_card(redactor: Redactor) -> None:
    out = redactor.text(f"{grouped(VISA, (4, 4, 4, 4), ' ')} 12 items")
    assert out == "[REDACTED:credit_card] 12 items"


def test_a_phone_running_into_another_number_keeps_the_phone(redactor: Redactor) -> None:
    assert redactor.text("+44 20 7946 0958 12345") == "[REDACTED:phone] 12345"


# --- keyed hash ------------------------------------------------------------------------------


def test_keyed_hash_format_is_the_hmac_of_the_normalised_value() -> None:
    out = keyed().text("mail Alice@Example.COM")
    assert out == f"mail [email:{hmac16(KEY, 'alice@example.com')}]"


def test_keyed_hash_correlates_one_value_written_differently() -> None:
    redactor = keyed()

    def tag(text: str) -> str:
        tokens: list[str] = TOKEN.findall(redactor.text(text))
        assert len(tokens) == 1, tokens
        return tokens[0]

    assert tag("JOHN.DOE@EXAMPLE.COM") == tag("john.doe@example.com") == tag("John.Doe@Example.com")
    assert tag("+86 138 1234 5678") == tag("13812345678") == tag("0086-138-1234-5678") == tag("138-1234-5678")
    assert tag(VISA) == tag(grouped(VISA, (4, 4, 4, 4), " ")) == tag(grouped(VISA, (4, 4, 4, 4), "-"))
    assert tag(VALID_IDS[1]) == tag(VALID_IDS[1].lower())
    assert tag("+1 (415) 555-0132") == tag("+1-415-555-0132")
    assert tag("+1 381 234 5678") != tag("13812345678")  # same digits, another country
    assert tag("john.doe@example.com") != tag("jane.doe@example.com")
    assert tag("john.doe@example.com").startswith("[email:")


def test_keyed_hash_differs_between_keys() -> None:
    text = "john.doe@example.com"
    assert keyed(KEY).text(text) != keyed(OTHER_KEY).text(text)


def test_keyed_hash_of_ip_addresses_uses_the_canonical_form() -> None:
    redactor = keyed(ip_address=True)
    assert redactor.text("2001:DB8:0:0:0:0:0:1") == redactor.text("2001:db8::1")


def test_keyed_hash_output_is_idempotent() -> None:
    redactor = keyed(ip_address=True)
    text = f"{VISA} a@example.com 13812345678 {VALID_IDS[0]} 10.1.2.3 password=x"
    once = redactor.text(text)
    assert redactor.text(once) == once
    assert redactor.findings(once) == []


def test_hash_hex_that_looks_like_a_card_is_not_masked_again() -> None:
    # 16 hex digits that happen to be all digits and pass Luhn: must stay as they are.
    hashed = f"[phone:{VISA}]"
    assert keyed().text(hashed) == hashed
    assert keyed().text(f"x {hashed} y") == f"x {hashed} y"


# --- settings errors -------------------------------------------------------------------------


def test_custom_patterns_tag_with_their_name() -> None:
    redactor = Redactor(RedactionSettings(custom=(("employee_id", r"EMP-[0-9]{6}"), ("order", r"ORD[0-9]{4}"))))
    assert redactor.text("by EMP-004211 for ORD1234") == "by [REDACTED:employee_id] for [REDACTED:order]"
    assert redactor.findings("EMP-004211") == [("employee_id", 0, 10)]
    assert "employee_id" in redactor.kinds and "order" in redactor.kinds


def test_custom_patterns_can_be_hashed() -> None:
    redactor = keyed(custom=(("employee_id", r"EMP-[0-9]{6}"),))
    assert redactor.text("EMP-004211") == f"[employee_id:{hmac16(KEY, 'EMP-004211')}]"


def test_custom_patterns_that_match_empty_text_are_harmless() -> None:
    redactor = Redactor(RedactionSettings(custom=(("maybe", r"x*"),)))
    assert redactor.text("abc xx def") == "abc [REDACTED:maybe] def"


def test_a_bad_custom_regex_is_named_in_the_error() -> None:
    with pytest.raises(ValueError) as caught:
        Redactor(RedactionSettings(custom=(("ok", r"a+"), ("employee_id", r"EMP-[0-9"))))
    message = str(caught.value)
    assert "'employee_id'" in message
    assert "EMP-[0-9" in message
    assert "unterminated character set" in message


@pytest.mark.parametrize("name", ["", "has space", "1st", "x" * 65, "tag]"])
def test_a_custom_name_that_cannot_be_a_tag_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="custom pattern"):
        Redactor(RedactionSettings(custom=((name, r"a"),)))


@pytest.mark.parametrize("key", [None, b"", b"short"])
def test_keyed_hash_needs_a_key(key: bytes | None) -> None:
    with pytest.raises(ValueError, match="hash_key"):
        Redactor(RedactionSettings(replacement=Replacement.KEYED_HASH, hash_key=key))


def test_replacement_accepts_its_string_value() -> None:
    redactor = Redactor(RedactionSettings(replacement="keyed_hash", hash_key=KEY))  # type: ignore[arg-type]
    assert redactor.text("a@example.com").startswith("[email:")
    with pytest.raises(ValueError, match="replacement"):
        Redactor(RedactionSettings(replacement="mask"))  # type: ignore[arg-type]


def test_kinds_lists_every_builtin_kind_when_all_are_on(redactor: Redactor) -> None:
    assert set(redactor.kinds) == set(BUILTIN_KINDS)


# --- idempotence -----------------------------------------------------------------------------

ALL_POSITIVES = [text for text, _, _ in PERSONAL_POSITIVES + CREDENTIALS + SECRET_PAIRS]


@pytest.mark.parametrize("text", ALL_POSITIVES)
def test_redacting_twice_changes_nothing(redactor: Redactor, text: str) -> None:
    once = redactor.text(text)
    assert redactor.text(once) == once
    assert redactor.findings(once) == []


def test_masking_does_not_unglue_a_neighbour(redactor: Redactor) -> None:
    # The second number is glued to the first, so it is no phone number on its own; masking the
    # first must not make it one (or text() would change its own output).
    once = redactor.text("+12025550143+12025550144+12025550145")
    assert redactor.text(once) == once


def test_our_own_tokens_are_left_alone(redactor: Redactor) -> None:
    text = "password=[REDACTED:secret] [REDACTED:email] [email:0123456789abcdef]\nCookie: [REDACTED:secret]"
    assert redactor.text(text) == text


# --- fuzzing ---------------------------------------------------------------------------------

_alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@st.composite
def planted_values(draw: st.DrawFn) -> tuple[str, str]:
    """(text to insert, value that must not survive)."""
    kind = draw(
        st.sampled_from(
            [
                "email",
                "cn_phone",
                "intl_phone",
                "prc_id",
                "ssn",
                "card",
                "jwt",
                "api_key",
                "pair",
                "spoken",
                "bearer",
                "ip",
            ]
        )
    )
    if kind == "email":
        local = draw(st.from_regex(r"[a-z0-9]{2,12}([._+-][a-z0-9]{1,8})?", fullmatch=True))
        domain = draw(st.from_regex(r"([a-z0-9]{1,10}\.){1,3}(com|org|cn|io|co\.uk)", fullmatch=True))
        value = f"{local}@{domain}"
        return draw(st.sampled_from([value, value.upper(), value.title()])), value
    if kind == "cn_phone":
        number = draw(st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True))
        prefix = draw(st.sampled_from(["", "+86", "+86 ", "0086", "0086-"]))
        separator = draw(st.sampled_from(["", " ", "-"]))
        written = number[:3] + separator + number[3:7] + separator + number[7:]
        return prefix + written, written
    if kind == "intl_phone":
        country = draw(st.sampled_from(["1", "44", "49", "33", "81", "61", "353"]))
        rest = draw(st.from_regex(r"[1-9][0-9]{7,9}", fullmatch=True))[: 14 - len(country)]
        separator = draw(st.sampled_from([" ", "-", "."]))
        written = f"+{country} {rest[:3]}{separator}{rest[3:6]}{separator}{rest[6:]}"
        return written, written
    if kind == "prc_id":
        region = draw(st.from_regex(r"[1-8][0-9]{5}", fullmatch=True))
        born = draw(st.dates(min_value=date(1920, 1, 1), max_value=date(2015, 12, 31)))
        sequence = draw(st.from_regex(r"[0-9]{3}", fullmatch=True))
        value = prc_id(region, born.strftime("%Y%m%d"), sequence)
        return value, value
    if kind == "ssn":
        area = draw(st.integers(1, 899).filter(lambda area: area != 666))
        value = f"{area:03d}-{draw(st.integers(1, 99)):02d}-{draw(st.integers(1, 9999)):04d}"
        return value, value
    if kind == "card":
        prefix, length, sizes = draw(
            st.sampled_from(
                [
                    ("4", 16, (4, 4, 4, 4)),
                    ("4", 13, (4, 4, 5)),
                    ("53", 16, (4, 4, 4, 4)),
                    ("2221", 16, (4, 4, 4, 4)),
                    ("37", 15, (4, 6, 5)),
                    ("6011", 16, (4, 4, 4, 4)),
                    ("62", 19, (4, 4, 4, 4, 3)),
                    ("3528", 16, (4, 4, 4, 4)),
                ]
            )
        )
        body = draw(st.from_regex(f"[0-9]{{{length - len(prefix) - 1}}}", fullmatch=True))
        number = luhn_complete(prefix + body)
        separator = draw(st.sampled_from(["", " ", "-"]))
        written = grouped(number, sizes, separator) if separator else number
        return written, written
    if kind == "jwt":
        claims = draw(st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.integers(), min_size=1))
        value = ".".join(
            [
                b64url(b'{"alg":"HS256"}'),
                b64url(json.dumps(claims).encode()),
                b64url(draw(st.binary(min_size=16, max_size=32))),
            ]
        )
        return value, value
    if kind == "api_key":
        prefix, length, alphabet = draw(
            st.sampled_from(
                [
                    ("sk-", 32, _alnum),
                    ("sk-proj-", 40, _alnum + "_-"),
                    ("sk-ant-api03-", 40, _alnum + "_-"),
                    ("AKIA", 16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"),
                    ("ghp_", 36, _alnum),
                    ("github_pat_", 40, _alnum + "_"),
                    ("xoxb-", 24, _alnum + "-"),
                    ("AIza", 35, _alnum + "_-"),
                    ("hf_", 34, _alnum),
                    ("glpat-", 20, _alnum + "_-"),
                ]
            )
        )
        value = prefix + draw(st.text(alphabet=alphabet, min_size=length, max_size=length))
        return value, value
    if kind == "pair":
        name = draw(st.sampled_from(["password", "api_key", "X-Api-Key", "token", "client_secret", "sig", "pwd"]))
        value = draw(st.text(alphabet=_alnum + "!#$%*+-./:=?@^_|~", min_size=8, max_size=24))
        form = draw(st.sampled_from(["{n}={v}", "{n}: {v}", '"{n}": "{v}"', "'{n}': '{v}'", "{n}={v}&x=1"]))
        return form.format(n=name, v=value), value
    if kind == "spoken":
        word = draw(st.sampled_from(["token", "Token", "password", "api key", "secret", "session"]))
        value = draw(st.text(alphabet=_alnum, min_size=13, max_size=40)) + "aB1"
        return f"{word} {draw(st.sampled_from(['', 'is ']))}{value}", value
    if kind == "bearer":
        token = draw(st.text(alphabet=_alnum + "._~+/-", min_size=12, max_size=40)) + "0"
        return f"Bearer {token}", token
    address = draw(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
    value = str(address)
    if address.version == 6 and sum(char not in ":." for char in value) < 4:
        value = "2001:db8::" + value.strip(":")
    return value, value


fuzz_redactor = Redactor(RedactionSettings(ip_address=True))
fuzz_keyed = keyed(ip_address=True)


def _holds_planted(value: str) -> bool:
    # An ip address of four or fewer hex digits ("::1", "1::") is deliberately not masked.
    return sum(char not in ":." for char in value) >= 4 or "." in value


@FUZZ
@given(
    pieces=st.lists(st.text(max_size=40), min_size=1, max_size=6),
    planted=st.lists(planted_values(), min_size=1, max_size=4),
    data=st.data(),
)
def test_planted_values_never_survive(pieces: list[str], planted: list[tuple[str, str]], data: st.DataObject) -> None:
    assume(not any(value in "".join(pieces) for _, value in planted))
    # Arbitrary text with each value inserted at a random position of it, never inside another
    # value; spaces around each value, since glued to arbitrary text a value is not a value any
    # more ("x13812345678" is an identifier).
    segments: list[tuple[str, bool]] = [(piece, False) for piece in pieces]
    for written, _ in planted:
        index = data.draw(st.integers(0, len(segments) - 1))
        piece, is_value = segments[index]
        cut = len(piece) if is_value else data.draw(st.integers(0, len(piece)))
        segments[index : index + 1] = [(piece[:cut], is_value), (f" {written} ", True), (piece[cut:], False)]
    text = "".join(piece for piece, _ in segments)
    for redactor in (fuzz_redactor, fuzz_keyed):
        out = redactor.text(text)
        # A short value can be part of a tag ("credit_c"); what counts is the text around tags.
        untagged = TOKEN.sub("\x00", out)
        for _, value in planted:
            if _holds_planted(value):
                assert value not in untagged, (text, out)
        assert redactor.text(out) == out


@FUZZ
@given(st.text(max_size=300))
def test_any_text_is_redacted_idempotently(text: str) -> None:
    for redactor in (fuzz_redactor, fuzz_keyed):
        out = redactor.text(text)
        assert redactor.text(out) == out


# Text made of the characters the patterns care about finds boundary bugs far sooner.
_DENSE = st.text(alphabet="0123456789 -+.:@_=\"'[]()/\\xXeyJkAsp\n", max_size=120)


@FUZZ
@given(_DENSE)
def test_dense_text_is_redacted_idempotently(text: str) -> None:
    for redactor in (fuzz_redactor, fuzz_keyed):
        out = redactor.text(text)
        assert redactor.text(out) == out
        spans = redactor.findings(text)
        assert all(0 <= start < end <= len(text) for _, start, end in spans)


# --- hostile input ---------------------------------------------------------------------------

MEGABYTE = 1_000_000

HOSTILE = {
    "at-signs": "a@" * (MEGABYTE // 2),
    "dashed-digits": "1-" * (MEGABYTE // 2),
    "jwt-dots": "eyJ" + "a." * 300_000,
    "jwt-chain": "eyJaa." * (MEGABYTE // 6),
    "digits": "4" * MEGABYTE,
    "card-groups": "4111 " * (MEGABYTE // 5),
    "card-dashes": "4111-" * (MEGABYTE // 5),
    "pluses": "+1 " * (MEGABYTE // 3),
    "colons": " ::" * (MEGABYTE // 3),
    "hex-colons": "ab:" * (MEGABYTE // 3),
    "dotted": "1." * (MEGABYTE // 2),
    "email-chain": "a.b@c.d" * (MEGABYTE // 7),
    "secret-names": "key: " * (MEGABYTE // 5),
    "open-quote": 'password: "' + "x" * MEGABYTE,
    "escapes": '"password":"' + "\\x" * (MEGABYTE // 2),
    "pem-dashes": "-----BEGIN RSA PRIVATE KEY-----" + "-" * MEGABYTE,
    "url-userinfo": "://a:" * (MEGABYTE // 5),
    "bearers": "Bearer aaaaaaaa1 " * (MEGABYTE // 18),
    "own-tokens": "[phone:4111111111111111]" * (MEGABYTE // 24),
    "glued-phones": "+12025550143" * (MEGABYTE // 12),
    "full-width": "１３８１２３４５６７８ 我的" * (MEGABYTE // 16),
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_megabyte_input_finishes(redactor: Redactor, name: str) -> None:
    out = redactor.text(HOSTILE[name])
    assert isinstance(out, str)


# --- seed corpus -----------------------------------------------------------------------------

CORPUS_FILES = sorted(CORPUS.glob("*.txt"))


def test_the_corpus_is_there() -> None:
    assert len(CORPUS_FILES) >= 20
    for path in CORPUS_FILES:
        assert path.with_suffix(".expect").is_file(), f"{path.name} has no .expect file"


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line] if path.exists() else []


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[path.stem for path in CORPUS_FILES])
def test_corpus(redactor: Redactor, path: Path) -> None:
    """`<name>.expect` lists values that must be gone; `<name>.keep`, text that must stay."""
    text = path.read_text(encoding="utf-8")
    out = redactor.text(text)
    gone = _lines(path.with_suffix(".expect"))
    assert gone, f"{path.with_suffix('.expect').name} is empty"
    for value in gone:
        assert value not in out, f"{path.name}: {value!r} survived in {out!r}"
    for value in _lines(path.with_suffix(".keep")):
        assert value in out, f"{path.name}: {value!r} was lost from {out!r}"
    assert redactor.text(out) == out
