"""What AWS's answers say about a credential: the error codes of its query (STS, IAM) and JSON (Bedrock)
protocols, and the words of a Bedrock 403, sorted into keywatch's health vocabulary."""

from __future__ import annotations

import re

from keywatch.domain import Health

# Error codes of AWS's query and JSON protocols, by what they say about the credential.
INVALID_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "IncompleteSignature",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
        "AuthFailure",
        "MissingAuthenticationToken",
    }
)
FORBIDDEN_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
THROTTLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
    }
)
# Management errors after which retrying cannot help until a person changes something.
PERMANENT_CODES = (
    INVALID_CODES
    | FORBIDDEN_CODES
    | frozenset(
        {
            "NoSuchEntity",
            "NoSuchEntityException",
            "ValidationError",
            "InvalidInput",
            "LimitExceeded",
        }
    )
)

# Words of a Bedrock 403 that rejects the token itself (observed bodies: {"Message": "Authentication failed:
# Please make sure your API Key is valid."}, {"Message": "Invalid API Key format: Must start with pre-defined
# prefix"}, {"message": "The security token included in the request is invalid."}).
BEDROCK_INVALID_WORDS = re.compile(
    r"authentication failed|invalid api key|api key is (?:invalid|expired)|security token included in the "
    r"request is (?:invalid|expired)|bearer token .*(?:invalid|expired)|token has expired|is expired",
    re.IGNORECASE,
)
BEDROCK_FORBIDDEN_WORDS = re.compile(r"not authorized to perform|explicit deny|access denied", re.IGNORECASE)


def classify_aws_error(status: int | None, code: str | None, message: str | None = None) -> Health:
    """One table for the query (STS, IAM) and JSON (Bedrock) protocols; 5xx never blames the key."""
    if status is not None and status >= 500:
        return Health.PROVIDER_ERROR
    if code in THROTTLE_CODES or status == 429:
        return Health.RATE_LIMITED
    if code in INVALID_CODES:
        return Health.INVALID
    if code in FORBIDDEN_CODES:
        return Health.FORBIDDEN
    if status in (401, 403):
        if message and BEDROCK_FORBIDDEN_WORDS.search(message):
            return Health.FORBIDDEN
        if message and BEDROCK_INVALID_WORDS.search(message):
            return Health.INVALID
        return Health.INVALID if status == 401 else Health.FORBIDDEN
    return Health.PROVIDER_ERROR  # 400 InvalidAction, 404 wrong endpoint ...: configuration, not the key


def is_permanent(status: int | None, code: str | None) -> bool:
    """A management error that retrying cannot cure: a refused credential, a missing entity, any other 4xx
    but throttling."""
    return code in PERMANENT_CODES or (status is not None and 400 <= status < 500 and code not in THROTTLE_CODES)
