"""The tokens every kind of signed link shares (app.signed_tokens): each kind refuses
another's tokens, a forged or expired one, and claims out of range; an optional claim
left out stays out."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest

from app.db import utcnow
from app.email.tokens import UNSUBSCRIBE, VERIFY, decode_email_token, issue_email_token
from app.messenger.action_tokens import (
    InvalidActionToken,
    decode_action_token,
    issue_action_token,
)
from app.messenger.push.open_tokens import InvalidOpenToken, decode_open_token, issue_open_token
from app.signed_tokens import InvalidSignedToken, decode, issue

KEY = "k" * 48
DEVICE = "4b8f1c1e-0d55-4c1f-9f53-0c7a5e1b2d3f"


def test_each_kind_reads_its_own_and_refuses_the_others() -> None:
    action = issue_action_token(KEY, 7, DEVICE, "c1", "s1")
    opened = issue_open_token(KEY, 7, DEVICE, "n1")
    claims = decode_action_token(action, KEY)
    assert (claims.user_id, claims.device_id, claims.conversation_id) == (7, DEVICE, "c1")
    assert claims.session_id == "s1"
    assert decode_open_token(opened, KEY).session_id is None  # left out, not null
    assert "sid" not in jwt.decode(opened, options={"verify_signature": False})
    with pytest.raises(InvalidOpenToken):
        decode_open_token(action, KEY)
    with pytest.raises(InvalidActionToken):
        decode_action_token(opened, KEY)
    verify = issue_email_token(KEY, VERIFY, 7, "a@example.com")
    with pytest.raises(InvalidSignedToken):
        decode_email_token(verify, KEY, UNSUBSCRIBE)
    assert decode_email_token(verify, KEY, VERIFY).email == "a@example.com"


def test_forged_expired_and_out_of_range_are_refused() -> None:
    token = issue(KEY, "kind", timedelta(minutes=1), 7, {"x": "y", "gone": None})
    user_id, claims = decode(token, KEY, "kind", ("x",))
    assert (user_id, claims["x"], "gone" in claims) == (7, "y", False)
    with pytest.raises(InvalidSignedToken):
        decode(token, "another key" * 4, "kind", ("x",))
    with pytest.raises(InvalidSignedToken):  # a claim the kind needs is missing
        decode(token, KEY, "kind", ("x", "z"))
    now = utcnow()
    expired = jwt.encode(
        {"aud": "kind", "sub": "7", "x": "y", "iat": now - timedelta(hours=2), "exp": now},
        KEY,
        algorithm="HS256",
    )
    with pytest.raises(InvalidSignedToken):
        decode(expired, KEY, "kind", ("x",))
    for sub in ("0", "-1", "not a number", str(2**63)):
        forged = jwt.encode(
            {"aud": "kind", "sub": sub, "x": "y", "exp": now + timedelta(minutes=1)},
            KEY,
            algorithm="HS256",
        )
        with pytest.raises(InvalidSignedToken):
            decode(forged, KEY, "kind", ("x",))
    too_long = issue_action_token(KEY, 7, "d" * 37, "c1")
    with pytest.raises(InvalidActionToken):
        decode_action_token(too_long, KEY)


def test_a_token_is_a_standard_jwt_whose_registered_claims_are_ours() -> None:
    """What issue() puts together by hand is what PyJWT makes and reads: an HS256 JWT
    with unicode claims kept; a caller's claim named like a registered one is ignored."""
    token = issue(
        KEY, "kind", timedelta(minutes=5), 7, {"aud": "other", "sub": "1", "n": "é\u2028"}
    )

    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    user_id, claims = decode(token, KEY, "kind", ("n",))
    assert (user_id, claims["aud"], claims["n"]) == (7, "kind", "é\u2028")
    assert claims["exp"] - claims["iat"] == 300
    with pytest.raises(InvalidSignedToken):
        decode(token, KEY, "other", ())
