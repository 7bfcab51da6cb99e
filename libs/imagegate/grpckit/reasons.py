"""The ErrorInfo reasons and metadata keys every imagegate service uses (see docs/errors.md)."""

from __future__ import annotations

# Caller errors (any service).
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNKNOWN_MODEL = "UNKNOWN_MODEL"
UNKNOWN_STYLE = "UNKNOWN_STYLE"
API_KEY_MISSING = "API_KEY_MISSING"
API_KEY_INVALID = "API_KEY_INVALID"
API_KEY_REVOKED = "API_KEY_REVOKED"
ADMIN_TOKEN_INVALID = "ADMIN_TOKEN_INVALID"
IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
RESULT_EXPIRED = "RESULT_EXPIRED"
# A repeated request_id whose request ended without images (failed, or abandoned before it ran).
REQUEST_ID_SPENT = "REQUEST_ID_SPENT"
# A repeated request_id whose first call is still running (on this or another Router replica).
REQUEST_IN_PROGRESS = "REQUEST_IN_PROGRESS"
# GetGeneration for a request_id with no stored result.
GENERATION_NOT_FOUND = "GENERATION_NOT_FOUND"
NOT_FOUND = "NOT_FOUND"
ALREADY_EXISTS = "ALREADY_EXISTS"

# Quota.
QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
PLAN_FORBIDS_MODEL = "PLAN_FORBIDS_MODEL"
RESERVATION_NOT_PENDING = "RESERVATION_NOT_PENDING"
RESERVATION_EXPIRED = "RESERVATION_EXPIRED"
COMMIT_EXCEEDS_RESERVATION = "COMMIT_EXCEEDS_RESERVATION"

# Router.
NO_CANDIDATE = "NO_CANDIDATE"
COST_CEILING_UNMET = "COST_CEILING_UNMET"
DEADLINE_TOO_SHORT = "DEADLINE_TOO_SHORT"
ALL_PROVIDERS_FAILED = "ALL_PROVIDERS_FAILED"
DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE"
OVERLOADED = "OVERLOADED"

# Provider adapters (ProviderService). Each maps from provider HTTP answers; see docs/errors.md.
PROVIDER_RATE_LIMITED = "PROVIDER_RATE_LIMITED"
PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"
PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
PROVIDER_CONTENT_MODERATED = "PROVIDER_CONTENT_MODERATED"
PROVIDER_INVALID_REQUEST = "PROVIDER_INVALID_REQUEST"
PROVIDER_UNSUPPORTED_PARAMETER = "PROVIDER_UNSUPPORTED_PARAMETER"
PROVIDER_AUTH_FAILED = "PROVIDER_AUTH_FAILED"
PROVIDER_OUT_OF_CREDITS = "PROVIDER_OUT_OF_CREDITS"
PROVIDER_BAD_RESPONSE = "PROVIDER_BAD_RESPONSE"
PROVIDER_CONCURRENCY_LIMITED = "PROVIDER_CONCURRENCY_LIMITED"
PROVIDER_DISABLED = "PROVIDER_DISABLED"

# An attempt cancelled because a hedged attempt answered first (or the caller left).
HEDGE_LOST = "HEDGE_LOST"

# Unexpected failures.
INTERNAL = "INTERNAL"

# ErrorInfo metadata keys with a shared meaning.
META_PROVIDER = "provider"
META_PROVIDER_MODEL = "provider_model"
META_PROVIDER_JOB_ID = "provider_job_id"
META_HTTP_STATUS = "http_status"
# "true" when the provider accepted the job before the failure, so it may bill it.
META_BILLABLE = "billable"
META_RETRY_AFTER_SECONDS = "retry_after_seconds"
META_TRACE_ID = "trace_id"
META_COST_MICROS = "cost_micros"
# What a failed attempt's provider bills, as the provider reported it (absent: not reported).
# The Router reads these into the attempt's usage; see docs/cost.md.
META_BILLED_IMAGES = "billed_images"
META_BILLED_MEGAPIXELS = "billed_megapixels"
META_BILLED_PROVIDER_SECONDS = "billed_provider_seconds"
META_BILLED_INPUT_TOKENS = "billed_input_tokens"
META_BILLED_OUTPUT_TOKENS = "billed_output_tokens"
# "model" when a failure the Router would hold against the whole provider (a rate limit) is
# about one route only: a partner behind the HF router, whose limits are its own.
META_BREAKER_SCOPE = "breaker_scope"

# Metering (appended).
PRICE_NOT_FOUND = "PRICE_NOT_FOUND"

# PromptEnhancer (appended; docs/enhancer.md).
# No text provider key is configured.
ENHANCER_NOT_CONFIGURED = "ENHANCER_NOT_CONFIGURED"
# Every configured text provider failed or was skipped.
ENHANCER_UNAVAILABLE = "ENHANCER_UNAVAILABLE"
# A text provider skipped because its breaker is open (ProviderFailure.reason, not a status).
BREAKER_OPEN = "BREAKER_OPEN"
# Configuration: an address that is not host:port with a port from 1 to 65535.
BAD_ADDRESS = "BAD_ADDRESS"
# Service-to-service security (appended; see docs/security.md).
# An internal RPC called without a service identity (no service token, no client certificate).
SERVICE_IDENTITY_REQUIRED = "SERVICE_IDENTITY_REQUIRED"
# A service token that does not match.
SERVICE_TOKEN_INVALID = "SERVICE_TOKEN_INVALID"
# A client certificate from our CA whose identity may not call this RPC.
SERVICE_NOT_ALLOWED = "SERVICE_NOT_ALLOWED"
# Only the admin token may see this (e.g. provider status detail).
ADMIN_ONLY = "ADMIN_ONLY"
