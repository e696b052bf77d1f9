"""Masks credentials and personal data in text before it leaves the process.

Every string the sidecar writes out (audit documents, access logs, span
attributes) goes through one `Redactor`. Credentials are always masked and
always with a plain tag: bearer and basic credentials, JWTs, API keys with
well-known prefixes, private keys, passwords in URLs, the values of
secret-looking `name=value` / `name: value` / `"name": "value"` pairs, and
whole `Authorization` and `Cookie` header values. Personal data (emails, phone
numbers, national ids, card numbers, optionally IP addresses, and any custom
patterns) is masked per `RedactionSettings`, either with a tag or with a keyed
hash that keeps equal values correlatable without making them recoverable.

Kinds, as they appear in tags and in `Redactor.findings`:

- credentials: ``secret``, ``jwt``, ``api_key`` (always ``[REDACTED:<kind>]``)
- personal data: ``email``, ``phone``, ``national_id``, ``credit_card``,
  ``ip``, and each custom pattern's name (``[REDACTED:<kind>]``, or
  ``[<kind>:<16 hex>]`` under `Replacement.KEYED_HASH`)

Overlapping findings merge into one masked span, so no part of either value
survives; the earliest (then longest) names it, except that a credential always
does. A value glued to letters or digits is not a value ("x13812345678" is an
identifier), and a header value (``Authorization: ...``, ``Cookie: ...``) is
masked to the end of its line.

Detection is deliberately ASCII-only (``[0-9]``, not ``\\d``): full-width
digits and internationalised addresses are left alone rather than half-matched.

Redaction is meant for single values (one document field, one attribute, one
log line). Run over serialised JSON it still hides everything it finds, but a
masked number becomes an unquoted tag and the JSON stops parsing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum


class Replacement(StrEnum):
    TAG = "tag"
    """``[REDACTED:email]``: nothing of the value survives."""
    KEYED_HASH = "keyed_hash"
    """``[email:<first 16 hex of HMAC-SHA256(key, normalised value)>]``: the same value gives
    the same text in every record, so it can be searched for and counted, but not read back
    without the key."""


@dataclass(frozen=True)
class RedactionSettings:
    """Which kinds of personal data are masked, and how. Credentials are always masked."""

    email: bool = True
    phone: bool = True
    """International numbers written with a ``+`` country code, and mainland China mobile
    numbers (``1[3-9]`` + 9 digits, optionally ``+86``/``0086``-prefixed and separated)."""
    national_id: bool = True
    """PRC resident ids (18 characters, MOD 11-2 checksum and birth date checked) and US SSNs
    (``ddd-dd-dddd``, impossible areas, groups and serials excluded)."""
    credit_card: bool = True
    """13-19 digits, contiguous or in space/dash separated groups, Luhn-valid, with an issuer
    prefix and length that some card scheme uses."""
    ip_address: bool = False
    """IPv4 and IPv6 addresses, validated by `ipaddress`."""
    custom: tuple[tuple[str, str], ...] = ()
    """``(name, regex)`` pairs; the whole match is masked and tagged with the name."""
    replacement: Replacement = Replacement.TAG
    hash_key: bytes | None = None
    """HMAC key for `Replacement.KEYED_HASH` (at least 16 bytes); unused under TAG."""


CREDENTIAL_KINDS = frozenset({"secret", "jwt", "api_key"})
"""Kinds that are always masked, and always with a tag: a keyed hash of a credential would
still let anyone holding the key confirm a guessed credential."""

BUILTIN_KINDS = ("secret", "jwt", "api_key", "email", "phone", "national_id", "credit_card", "ip")

_MAX_PASSES = 8
"""Masking changes what the patterns see next to the masked text, so `Redactor.text` repeats
until nothing changes, which makes it idempotent. Candidates glued to a tag are ignored (see
`_clear_of_tokens`), so in practice the second pass finds nothing and only confirms; the cap
bounds hostile input."""

_MIN_HASH_KEY_BYTES = 16

_CUSTOM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")

# Text this module produced. Matches lying inside one are ignored, so a second pass never
# rewrites a tag (the hex of a keyed hash can look like a card number) and text() is idempotent.
_OWN_TOKEN = re.compile(r"\[(?:REDACTED:[A-Za-z][A-Za-z0-9_.-]{0,63}|[A-Za-z][A-Za-z0-9_.-]{0,63}:[0-9a-f]{16})\]")

# Linear time: every pattern below either bounds each repeated token, or ends in a single greedy
# character class with nothing after it that could force backtracking, and can start only at the
# first character of a run. Unbounded trailing classes are on purpose: a bound there would leave
# the tail of an over-long credential in the output.
#
# Speed: a pattern that begins with a literal or a plain character class lets the regex engine
# skip ahead to where a match can start, instead of trying every position; so boundary checks
# come after the first character, as two-character lookbehinds.

# --- credentials --------------------------------------------------------------------------

# A secret word, alone or ending a compound name (OPENAI_API_KEY, db.password, X-Amz-Signature,
# x-api-key): any character but a letter or digit may come before it. "max_tokens" and
# "token_count" do not end in a secret word. The words are key, apikey, token, accesstoken,
# authtoken, idtoken, refreshtoken, secret, clientsecret, password, passwd, passphrase, pwd,
# auth, authorization, sig, signature, session, sessionid (session_id, session-id) and cookie,
# in any case, spelled as "first letter, then the rest" so that the scan can skip to the letters
# that can start one.
_SECRET_WORD = (
    r"[AaCcIiKkPpRrSsTt](?<![A-Za-z0-9].)(?i:"
    r"(?<=a)(?:pikey|ccesstoken|uth(?:token|orization)?)"
    r"|(?<=c)(?:lientsecret|ookie)"
    r"|(?<=i)dtoken"
    r"|(?<=k)ey"
    r"|(?<=p)(?:assw(?:or)?d|assphrase|wd)"
    r"|(?<=r)efreshtoken"
    r"|(?<=s)(?:ecret|ig(?:nature)?|ession(?:[_-]?id)?)"
    r"|(?<=t)oken"
    r")"
)

# In prose ("my token is Qr1FqXSTs98vPlL2", "session 8f14e45fceea167a5a36") there is no separator,
# so the next word is masked only when it looks generated: sixteen or more characters with a digit
# among letters of both cases (base62, base64) or among hex digits. Words, numbers and identifiers
# such as "rotation_policy_2024_v1" are none of these.
_TOKEN_CHAR = r"[A-Za-z0-9._~+/-]"
_GENERATED_TOKEN = (
    rf"(?={_TOKEN_CHAR}*[0-9])"
    rf"(?:(?={_TOKEN_CHAR}*[a-z])(?={_TOKEN_CHAR}*[A-Z])|(?=[0-9._~+/-]*[A-Fa-f])(?!{_TOKEN_CHAR}*[G-Zg-z]))"
    rf"{_TOKEN_CHAR}{{16,}}=*"
)

_SECRET_PAIR = re.compile(
    _SECRET_WORD + r"\\?[\"']?"
    r"(?:"
    # "key == other" compares in code; "password==x" still sets a password ending in "=x".
    r"[ \t]{0,8}[:=](?!=[ \t])[ \t]{0,8}"
    r"(?:"
    # JSON inside a JSON string (a logged request body): stop at the first escape.
    r"\\\"(?P<escaped>[^\"\\\r\n]+)"
    # A quoted value, to its closing quote; a value cut off by truncation runs to the line end.
    r"|\"(?P<double>(?:[^\"\\\r\n]|\\.)+)\"?"
    r"|'(?P<single>(?:[^'\\\r\n]|\\.)+)'?"
    # A bare value ends where a query string, cookie list or enclosing structure continues;
    # it never starts with an opening bracket, so nested objects and our own tags are left alone.
    r"|(?P<bare>[^\s\"',;&()\[\]{}<>][^\s\"',;&)\]}>]*)"
    r")"
    r"|[ \t]{1,8}(?:(?i:is|was)[ \t]{1,8})?(?P<spoken>" + _GENERATED_TOKEN + r")"
    r")",
    re.ASCII,
)
_SECRET_PAIR_GROUPS = ("escaped", "double", "single", "bare", "spoken")
_SECRET_PAIR_NEEDLES = ("key", "token", "secret", "pass", "pwd", "auth", "sig", "session", "cookie")

# Header lines (Authorization: Digest a="b", c="d"; Set-Cookie: a=b; c=d): the whole value, up
# to the end of the line or of an enclosing quoted string.
_SECRET_HEADER = re.compile(
    r"[AaCc](?<![A-Za-z0-9].)(?i:(?<=a)uthorization|(?<=c)ookie)[ \t]{0,8}:[ \t]{0,8}(?P<value>[^\r\n\"'\\]+)",
    re.ASCII,
)

_SCHEME_CREDENTIAL = re.compile(
    r"[Bb](?<![A-Za-z0-9_-].)(?i:earer|asic)[ \t]{1,8}(?P<value>[A-Za-z0-9._~+/-]{8,}=*)",
    re.ASCII,
)

_URL_PASSWORD = re.compile(r"://[^\s/@:]{1,256}:(?P<value>[^\s/@]{1,256})@", re.ASCII)

_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z ]{0,32}PRIVATE KEY-----(?:[^-]|-(?!----END))*(?:-----END[A-Z ]{0,32}PRIVATE KEY-----)?",
    re.ASCII,
)

_JWT = re.compile(
    r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*",
    re.ASCII,
)

_API_KEY = re.compile(
    r"[Aghrsx](?<![A-Za-z0-9].)(?:"
    r"(?<=s)k-[A-Za-z0-9_-]{20,}"  # OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), DeepSeek, ...
    r"|(?<=[sr])k_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|(?<=A)[KS]IA[A-Z0-9]{16}(?![A-Za-z0-9])"  # AWS access key ids
    r"|(?<=g)(?:h[pousr]_[A-Za-z0-9]{36,}|ithub_pat_[A-Za-z0-9_]{22,})"  # GitHub
    r"|(?<=x)ox[baprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?<=A)Iza[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"  # Google
    r"|(?<=h)f_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|(?<=g)lpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r")",
    re.ASCII,
)
_API_KEY_NEEDLES = ("sk-", "k_live_", "k_test_", "AKIA", "ASIA", "gh", "github_pat_", "xox", "AIza", "hf_", "glpat-")

# --- personal data ------------------------------------------------------------------------

_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-](?<![A-Za-z0-9._%+-].)[A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,63}(?![A-Za-z0-9-])",
    re.ASCII,
)

# Numbers glued to letters are identifiers (hex trace ids, hashes), not personal data; this is
# the lookahead half, the lookbehind half follows each pattern's first character.
_NUMBER_AFTER = r"(?![0-9A-Za-z_])"

_CN_MOBILE = re.compile(
    r"[+01](?<![0-9A-Za-z_+].)(?:(?<=\+)86[ -]?1|(?<=0)086[ -]?1|(?<=1))"
    r"[3-9][0-9](?:[ -]?[0-9]{4}){2}" + _NUMBER_AFTER,
    re.ASCII,
)

# Digit runs are separated by exactly one separator each, so there is one way to split a
# candidate and backtracking stays linear; the digit count (8-15, E.164) is checked afterwards.
_INTERNATIONAL_PHONE = re.compile(
    r"\+(?<![0-9A-Za-z_+].)(?=[0-9 .()-]{8})[1-9][0-9]{0,14}"
    r"(?:[ .-]?\([0-9]{1,6}\)[ .-]?[0-9]{1,14})?"
    r"(?:[ .-][0-9]{1,14}){0,7}" + _NUMBER_AFTER,
    re.ASCII,
)

_PRC_ID = re.compile(
    r"[1-9](?<![0-9A-Za-z_].)[0-9]{5}(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
    r"[0-9]{3}[0-9Xx]" + _NUMBER_AFTER,
    re.ASCII,
)

_US_SSN = re.compile(
    r"[0-8](?<![0-9A-Za-z_-].)[0-9]{2}(?<!000)(?<!666)-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![0-9A-Za-z_-])",
    re.ASCII,
)

# Card numbers start with 2-6 (or 81, UnionPay's newer range); 1-prefixed runs are almost
# always epoch timestamps and byte counts. Written in groups, the first has four digits (4-4-4-4,
# 4-6-5, 4-4-4-4-3, ...) and one separator repeats. The issuer prefix, the length and the
# Luhn check are left to `_card_length`.
_CARD = re.compile(
    r"[2-68](?<![0-9A-Za-z_].)(?:"
    r"[0-9]{12,18}"
    r"|[0-9]{3}(?P<sep>[ -])[0-9]{2,6}(?:(?P=sep)[0-9]{1,6}){1,4}"
    r")" + _NUMBER_AFTER,
    re.ASCII,
)

_IPV4 = re.compile(
    r"[0-9](?<![0-9A-Za-z_.].)[0-9]{0,2}\.(?:[0-9]{1,3}\.){2}[0-9]{1,3}(?![0-9A-Za-z_]|\.[0-9])",
    re.ASCII,
)

_IPV6 = re.compile(
    r"[0-9A-Fa-f:](?<![0-9A-Za-z_:.].)"
    r"(?:(?<=:)[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){1,6}|(?<!:)[0-9A-Fa-f]{0,3}(?::[0-9A-Fa-f]{0,4}){2,7})"
    r"(?:\.[0-9]{1,3}){0,3}(?![0-9A-Za-z_:]|\.[0-9])",
    re.ASCII,
)

_DIGITS = tuple("0123456789")

_DIGIT_RUN = re.compile(r"[0-9]+")
_NOT_DIGIT = re.compile(r"[^0-9]")

_PRC_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_PRC_CHECK = "10X98765432"


# --- validators: how much of the candidate is accepted (a length), or None -------------------

# Each digit replaced by the digit sum of its double, for Luhn's every-other-digit step.
_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")


def _luhn_valid(digits: str) -> bool:
    # Summing the encoded bytes keeps the loop in C; each digit byte is its value plus 48.
    total = sum(digits[-1::-2].encode()) + sum(digits[-2::-2].translate(_LUHN_DOUBLED).encode())
    return (total - 48 * len(digits)) % 10 == 0


def _card_scheme(digits: str) -> bool:
    """Whether some card scheme issues numbers with this prefix and length."""
    length = len(digits)
    first, two = digits[0], int(digits[:2])
    if first == "4":
        return length in (13, 16, 19)  # Visa
    if first == "5":
        return length == 16 if 51 <= two <= 55 else length >= 13  # Mastercard; Maestro
    if first == "2":
        prefix = int(digits[:4])
        return (2221 <= prefix <= 2720 and length == 16) or 2200 <= prefix <= 2204  # Mastercard; Mir
    if first == "3":
        if two in (34, 37):
            return length == 15  # American Express
        return length >= 14 and two in (30, 35, 36, 38, 39)  # Diners, JCB
    if first == "6":
        return length >= 16  # Discover, UnionPay, RuPay, Maestro
    return two == 81 and length >= 16  # UnionPay


def _card_length(candidate: str) -> int | None:
    if candidate.isdigit():
        return len(candidate) if _card_scheme(candidate) and _luhn_valid(candidate) else None
    # Grouped: the number may have run into a neighbouring group ("4111 1111 1111 1111 12"), so
    # the shorter prefixes of whole groups are candidates too.
    groups = candidate.split(candidate[4])
    end = len(candidate)
    while len(digits := "".join(groups)) >= 13:
        if _card_scheme(digits) and _luhn_valid(digits):
            return end
        end -= len(groups.pop()) + 1
    return None


def _prc_id_length(candidate: str) -> int | None:
    total = sum(int(char) * weight for char, weight in zip(candidate[:17], _PRC_WEIGHTS, strict=True))
    if candidate[17].upper() != _PRC_CHECK[total % 11]:
        return None
    try:
        born = date(int(candidate[6:10]), int(candidate[10:12]), int(candidate[12:14]))
    except ValueError:
        return None
    return len(candidate) if born <= date.today() else None


def _international_phone_length(candidate: str) -> int | None:
    # E.164 allows 15 digits; a longer candidate ran into a neighbouring number, so keep the
    # longest prefix of whole digit runs that fits.
    digits = 0
    end = None
    for run in _DIGIT_RUN.finditer(candidate):
        if digits + run.end() - run.start() > 15:
            break
        digits += run.end() - run.start()
        end = run.end()
    return end if end is not None and digits >= 8 else None


def _scheme_credential_length(candidate: str) -> int | None:
    # "Basic authentication" and "Bearer token" are prose, not credentials: require something
    # a random token has and an English word lacks.
    if any(char.isdigit() or char in "._~+/=-" for char in candidate):
        return len(candidate)
    upper = sum(char.isupper() for char in candidate)
    return len(candidate) if 2 <= upper < len(candidate) else None


def _ipv4_length(candidate: str) -> int | None:
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return None
    return len(candidate)


def _ipv6_length(candidate: str) -> int | None:
    # Clock times and MAC addresses have colons but neither "::" nor eight groups, and "::1" or
    # "a[1::2]" carry too little to be anyone's address.
    if "::" not in candidate and candidate.count(":") < 6:
        return None
    if sum(char not in ":." for char in candidate) < 4:
        return None
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    return len(candidate)


# --- normalisers: one value written differently hashes alike --------------------------------


def _same(value: str) -> str:
    return value


def _lowercase(value: str) -> str:
    return value.lower()


def _digits(value: str) -> str:
    return _NOT_DIGIT.sub("", value)


def _phone_digits(value: str) -> str:
    # Country code and number, as E.164 writes them without the "+": +86 138 1234 5678,
    # 0086-13812345678 and 138-1234-5678 are one number, and +1 381 234 5678 is another.
    digits = _digits(value)
    if value.startswith("+"):
        return digits
    if digits.startswith("00"):
        return digits[2:]
    return "86" + digits  # a mainland China mobile number written without its country code


def _uppercase(value: str) -> str:
    return value.upper()


def _ip(value: str) -> str:
    return str(ipaddress.ip_address(value))


@dataclass(frozen=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    groups: tuple[str, ...] = ()
    """Named groups holding the value to mask (the first that took part); empty: the whole
    match. Secret pairs mask the value and keep the name."""
    accept: Callable[[str], int | None] | None = None
    normalise: Callable[[str], str] = _same
    needles: tuple[str, ...] = ()
    """The pattern cannot match text that contains none of these (empty: always run). A
    substring test is far cheaper than a regex scan, and most text holds none of them."""
    folded: bool = False
    """Whether `needles` are looked for in the lowercased text."""


# A candidate span: (start, end, rank, kind). The rank is the detector's position and breaks
# ties between equal spans: a JWT under a secret name is reported as a JWT, an 18-digit id
# that also passes Luhn as a national id.
_Found = tuple[int, int, int, str]


def _credential_detectors() -> list[_Detector]:
    return [
        _Detector("jwt", _JWT, needles=("eyJ",)),
        _Detector("api_key", _API_KEY, needles=_API_KEY_NEEDLES),
        _Detector("secret", _PRIVATE_KEY, needles=("PRIVATE KEY",)),
        _Detector("secret", _SECRET_HEADER, ("value",), needles=("authorization", "cookie"), folded=True),
        _Detector("secret", _SECRET_PAIR, _SECRET_PAIR_GROUPS, needles=_SECRET_PAIR_NEEDLES, folded=True),
        _Detector(
            "secret",
            _SCHEME_CREDENTIAL,
            ("value",),
            _scheme_credential_length,
            needles=("bearer", "basic"),
            folded=True,
        ),
        _Detector("secret", _URL_PASSWORD, ("value",), needles=("://",)),
    ]


def _personal_detectors(settings: RedactionSettings) -> list[_Detector]:
    detectors: list[_Detector] = []
    if settings.national_id:
        detectors.append(_Detector("national_id", _PRC_ID, (), _prc_id_length, _uppercase, _DIGITS))
        detectors.append(_Detector("national_id", _US_SSN, (), None, _digits, ("-",)))
    if settings.credit_card:
        detectors.append(_Detector("credit_card", _CARD, (), _card_length, _digits, _DIGITS))
    if settings.phone:
        detectors.append(_Detector("phone", _CN_MOBILE, (), None, _phone_digits, _DIGITS))
        detectors.append(
            _Detector("phone", _INTERNATIONAL_PHONE, (), _international_phone_length, _phone_digits, ("+",))
        )
    if settings.email:
        detectors.append(_Detector("email", _EMAIL, (), None, _lowercase, ("@",)))
    if settings.ip_address:
        detectors.append(_Detector("ip", _IPV4, (), _ipv4_length, _ip, (".",)))
        detectors.append(_Detector("ip", _IPV6, (), _ipv6_length, _ip, (":",)))
    return detectors


def _custom_detectors(custom: tuple[tuple[str, str], ...]) -> list[_Detector]:
    detectors = []
    for name, regex in custom:
        if not isinstance(name, str) or not _CUSTOM_NAME.fullmatch(name):
            raise ValueError(
                f"custom pattern {name!r}: the name becomes the tag, so it must be a letter followed by "
                "up to 63 letters, digits, '_', '.' or '-'"
            )
        try:
            pattern = re.compile(regex)
        except (re.error, TypeError) as exc:
            raise ValueError(f"custom pattern {name!r}: invalid regular expression {regex!r}: {exc}") from None
        detectors.append(_Detector(name, pattern))
    return detectors


class Redactor:
    """Finds and masks credentials and personal data; built once, shared by every writer.

    Holds nothing that changes after construction, so one instance may serve several threads.
    """

    def __init__(self, settings: RedactionSettings) -> None:
        try:
            replacement = Replacement(settings.replacement)
        except ValueError:
            raise ValueError(
                f"replacement: expected one of {', '.join(mode.value for mode in Replacement)}, "
                f"got {settings.replacement!r}"
            ) from None
        hash_key = settings.hash_key
        if replacement is Replacement.KEYED_HASH and (
            not isinstance(hash_key, bytes) or len(hash_key) < _MIN_HASH_KEY_BYTES
        ):
            got = "none" if hash_key is None else f"{len(hash_key)} bytes"
            raise ValueError(
                f"hash_key: keyed_hash replacement needs a key of at least {_MIN_HASH_KEY_BYTES} bytes, got {got}"
            )
        self._replacement = replacement
        self._hash_key = hash_key or b""
        self._detectors: tuple[_Detector, ...] = (
            *_credential_detectors(),
            *_personal_detectors(settings),
            *_custom_detectors(settings.custom),
        )

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind this redactor can report, credentials first (for counters' label sets)."""
        return tuple(dict.fromkeys(detector.kind for detector in self._detectors))

    def text(self, value: str) -> str:
        """A copy of `value` with every finding replaced; `text(text(x)) == text(x)`."""
        for _ in range(_MAX_PASSES):
            resolved = self._resolved(value)
            if not resolved:
                break
            replaced = self._replaced(value, resolved)
            if replaced == value:
                break
            value = replaced
        return value

    def findings(self, value: str) -> list[tuple[str, int, int]]:
        """What one pass of `text` replaces: ``(kind, start, end)``, in order, not overlapping."""
        return [(winner[3], start, end) for start, end, winner in self._resolved(value)]

    # -- internals --------------------------------------------------------------------------

    def _candidates(self, value: str) -> list[_Found]:
        found: list[_Found] = []
        folded: str | None = None
        for rank, detector in enumerate(self._detectors):
            if detector.needles:
                if detector.folded:
                    if folded is None:
                        folded = value.lower()
                    haystack = folded
                else:
                    haystack = value
                if not any(needle in haystack for needle in detector.needles):
                    continue
            pattern, groups, accept, kind = detector.pattern, detector.groups, detector.accept, detector.kind
            if accept is None:
                for match in pattern.finditer(value):
                    start, end = _value_span(match, groups)
                    if end > start:
                        found.append((start, end, rank, kind))
                continue
            # A candidate, accepted or not, may overlap a valid one that starts inside it
            # ("5678 4111 1111 1111 1111" holds two card-shaped runs), so the search resumes
            # one character on rather than after it; overlapping findings merge later. Verdicts
            # are remembered for this call: hostile input repeats one candidate many times.
            position = 0
            verdicts: dict[str, int | None] = {}
            while (hit := pattern.search(value, position)) is not None:
                start, end = _value_span(hit, groups)
                candidate = value[start:end]
                if candidate in verdicts:
                    accepted = verdicts[candidate]
                else:
                    accepted = verdicts[candidate] = accept(candidate) if candidate else None
                if accepted:
                    found.append((start, start + accepted, rank, kind))
                position = hit.start() + 1
        return found

    def _resolved(self, value: str) -> list[tuple[int, int, _Found]]:
        """Non-overlapping spans to replace, each with the candidate that decides its replacement.

        Overlapping candidates merge into one span covering all of them, so no part of any
        detected value survives. The earliest (then longest) candidate names the span, except
        that a credential always does, so that a credential is never hashed.
        """
        candidates = self._candidates(value)
        if not candidates:
            return []
        if "[" in value:
            tokens = [match.span() for match in _OWN_TOKEN.finditer(value)]
            if tokens:
                candidates = _clear_of_tokens(candidates, tokens)
        candidates.sort(key=lambda found: (found[0], -found[1], found[2]))
        resolved: list[tuple[int, int, _Found]] = []
        span_start = span_end = -1
        winner: _Found | None = None
        for found in candidates:
            if winner is not None and found[0] < span_end:
                span_end = max(span_end, found[1])
                if found[3] in CREDENTIAL_KINDS and winner[3] not in CREDENTIAL_KINDS:
                    winner = found
                continue
            if winner is not None:
                resolved.append((span_start, span_end, winner))
            span_start, span_end, winner = found[0], found[1], found
        if winner is not None:
            resolved.append((span_start, span_end, winner))
        return resolved

    def _replaced(self, value: str, resolved: list[tuple[int, int, _Found]]) -> str:
        parts = []
        position = 0
        for start, end, winner in resolved:
            parts.append(value[position:start])
            parts.append(self._replacement_for(winner, value[winner[0] : winner[1]]))
            position = end
        parts.append(value[position:])
        return "".join(parts)

    def _replacement_for(self, winner: _Found, found: str) -> str:
        kind = winner[3]
        if self._replacement is Replacement.TAG or kind in CREDENTIAL_KINDS:
            return f"[REDACTED:{kind}]"
        normalised = self._detectors[winner[2]].normalise(found)
        digest = hmac.new(self._hash_key, normalised.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"[{kind}:{digest.hexdigest()[:16]}]"


def _value_span(match: re.Match[str], groups: tuple[str, ...]) -> tuple[int, int]:
    if not groups:
        return match.span()
    for name in groups:
        start, end = match.span(name)
        if start >= 0:
            return start, end
    return 0, 0


def _clear_of_tokens(candidates: list[_Found], tokens: list[tuple[int, int]]) -> list[_Found]:
    """The candidates that leave our own tokens (in `tokens`, sorted) as they are.

    Dropped: a candidate inside a token (the hex of a keyed hash can look like a card number),
    one that cuts a token in half, and one glued to a token's edge. The last matters because a
    token's brackets separate it from its neighbours, where the characters it replaced did not:
    a number glued to a masked one ("+12345678+12345678") was no candidate before the masking
    and must not become one after it, or text() would not be idempotent. A candidate covering
    whole tokens is kept: it masks more than they did.
    """
    starts = [start for start, _ in tokens]
    token_starts = set(starts)
    token_ends = {end for _, end in tokens}
    kept = []
    for found in candidates:
        start, end = found[0], found[1]
        if start in token_ends or end in token_starts:
            continue
        before = bisect_right(starts, start) - 1
        if before >= 0:
            token_start, token_end = tokens[before]
            if token_end > start and (token_start < start or token_end >= end):
                continue
        last = bisect_left(starts, end) - 1
        if last >= 0 and starts[last] < end < tokens[last][1]:
            continue
        kept.append(found)
    return kept
