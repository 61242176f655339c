//! SDK failures turned into the domain's [`PortError`], sorted by what they say about the
//! dependency: throttled, timed out, unreachable or failing on its side is `Degraded` (what
//! the circuit breaker counts); anything else (a request we built wrong, a missing
//! permission) is `Unavailable`.

use aws_sdk_dynamodb::error::SdkError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use flash_domain::ports::PortError;

/// Error codes DynamoDB and SQS answer when they shed load or fail on their side.
const DEGRADED_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    // SQS
    "RequestThrottled",
    "InternalError",
    "InternalFailure",
    "KmsThrottled",
];

/// Reason codes inside a canceled transaction that mean the same for that item.
pub const DEGRADED_TRANSACTION_REASONS: &[&str] =
    &["ThrottlingError", "ProvisionedThroughputExceeded"];

/// Whether the failure says the dependency is overloaded or out of reach.
pub fn is_degraded<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            s.raw().status().is_server_error()
                || s.err().code().is_some_and(|c| DEGRADED_CODES.contains(&c))
        }
        _ => false,
    }
}

/// The port error for a failed SDK call.
pub fn port_error<E>(what: &'static str, e: SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if is_degraded(&e) {
        PortError::degraded(what, e)
    } else {
        PortError::unavailable(what, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_dynamodb::types::error::ProvisionedThroughputExceededException;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(
            StatusCode::try_from(status).expect("status"),
            SdkBody::empty(),
        )
    }

    fn service(err: PutItemError, status: u16) -> SdkError<PutItemError, HttpResponse> {
        SdkError::service_error(err, response(status))
    }

    fn coded(code: &str) -> PutItemError {
        PutItemError::generic(
            aws_smithy_types::error::ErrorMetadata::builder()
                .code(code)
                .build(),
        )
    }

    #[test]
    fn throttles_timeouts_and_server_errors_are_degraded() {
        // As the SDK decodes it: the modeled error, with the code from the response.
        let throttled = service(
            PutItemError::ProvisionedThroughputExceededException(
                ProvisionedThroughputExceededException::builder()
                    .meta(
                        aws_smithy_types::error::ErrorMetadata::builder()
                            .code("ProvisionedThroughputExceededException")
                            .build(),
                    )
                    .build(),
            ),
            400,
        );
        assert!(is_degraded(&throttled));
        assert!(is_degraded(&service(coded("ThrottlingException"), 400)));
        assert!(is_degraded(&service(coded("Anything"), 503)));
        assert!(is_degraded(&SdkError::<PutItemError, _>::timeout_error(
            "attempt timed out"
        )));
        assert!(port_error("dynamodb PutItem", throttled).is_degraded());
    }

    #[test]
    fn answers_about_the_request_are_not() {
        for code in ["ValidationException", "AccessDeniedException"] {
            let e = service(coded(code), 400);
            assert!(!is_degraded(&e), "{code}");
            assert!(!port_error("dynamodb PutItem", e).is_degraded());
        }
        assert!(!is_degraded(
            &SdkError::<PutItemError, HttpResponse>::construction_failure("bad input")
        ));
    }
}
