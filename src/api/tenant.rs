//! Who is asking: the org of the request's `x-rh-identity`, checked with the consumer's rules,
//! and the request id that follows the request through the logs.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use super::{ApiError, ApiState};
use crate::envelope::{check_identity_headers, check_request_id, Reason, IDENTITY_HEADER, REQUEST_ID_HEADER};

/// The caller's org: every query is bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub org_id: String,
}

/// The request's id, taken from `x-rh-insights-request-id` or made up, and returned in it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
    headers.get_all(name).iter().map(HeaderValue::as_bytes).collect()
}

impl FromRequestParts<ApiState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Tenant, ApiError> {
        let identity =
            check_identity_headers(&values(&parts.headers, IDENTITY_HEADER), &state.identity_schema).map_err(|rejection| {
                // The rejection's own text may quote parts of the identity; the answer names only
                // the rule that failed.
                let code = rejection.reason.code();
                let message = match rejection.reason {
                    Reason::IdentityMissing => format!("the {IDENTITY_HEADER} header is missing"),
                    Reason::IdentityDuplicate => format!("the {IDENTITY_HEADER} header is given more than once"),
                    _ => format!("the {IDENTITY_HEADER} header is not acceptable ({code})"),
                };
                tracing::info!(reason = code, "API request refused: identity");
                ApiError::unauthorized(code, message)
            })?;
        match identity.org_id {
            Some(org_id) => {
                tracing::debug!(org_id = %org_id, identity_type = identity.identity_type.as_str(), "API caller");
                Ok(Tenant { org_id })
            }
            None => Err(ApiError::forbidden(
                "identity_org_missing",
                format!("the {IDENTITY_HEADER} identity has no org_id, and events belong to an org"),
            )),
        }
    }
}

/// Takes the request id (or makes one), logs the request under it, and returns it in the answer.
pub(super) async fn request_context(mut request: Request, next: Next) -> Response {
    let given = values(request.headers(), REQUEST_ID_HEADER);
    let request_id = if given.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        match check_request_id(given.iter().copied()) {
            Ok(id) => id,
            Err(rejection) => {
                return ApiError::bad_parameter(REQUEST_ID_HEADER, rejection.message).into_response();
            }
        }
    };
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let span = tracing::info_span!("api", request_id = %request_id);
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(%method, %path, status = response.status().as_u16(), "API request answered"));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
