//! One error for every AWS call natron makes (agent and provisioner), its
//! classification, and the one retry policy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// How a failed call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The service asked us to slow down (HTTP 503 RequestLimitExceeded and
    /// friends).
    Throttled,
    /// A 5xx without a throttling code, or no error code at all.
    Server,
    /// Timeouts, refused or reset connections, unreadable answers.
    Transport,
    /// The named resource does not exist.
    NotFound,
    /// Anything else the caller got wrong (permissions, bad parameters).
    Client,
    /// No credentials to sign with (no instance profile, or IMDS would
    /// not give its role's credentials). Not retried in place: each
    /// attempt asks IMDS again, and only the operator can fix it.
    Credentials,
}

impl ErrorKind {
    /// Worth another attempt: throttling, server and transport errors.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Server | ErrorKind::Transport
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::Server => "server",
            ErrorKind::Transport => "transport",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Client => "client",
            ErrorKind::Credentials => "credentials",
        }
    }
}

/// A failed AWS call, naming the service, the operation and the resource.
/// The SDK's error stays attached as the source.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{service} {operation} {resource}: {}{message}", code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct AwsError {
    pub service: &'static str,
    pub operation: &'static str,
    // Boxed strings keep the error small: it is the `Err` of every call.
    pub resource: Box<str>,
    pub code: Option<Box<str>>,
    pub message: Box<str>,
    pub kind: ErrorKind,
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// Error codes that mean "slow down" (or "try again soon").
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "PriorRequestNotComplete",
];
const SERVER: &[&str] = &[
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "Unavailable",
];

impl AwsError {
    /// An error found in an answer rather than returned by the SDK.
    pub fn new(
        service: &'static str,
        operation: &'static str,
        resource: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> AwsError {
        AwsError {
            service,
            operation,
            resource: resource.into().into(),
            code: None,
            message: message.into().into(),
            kind,
            source: None,
        }
    }

    /// An answer without the resource asked for (an empty list, where the
    /// API gives no error code): counts as not found.
    pub fn not_found(
        service: &'static str,
        operation: &'static str,
        resource: impl Into<String>,
        message: impl Into<String>,
    ) -> AwsError {
        AwsError {
            code: Some("NotFound".into()),
            ..AwsError::new(service, operation, resource, ErrorKind::NotFound, message)
        }
    }

    /// Classifies an SDK error.
    pub fn from_sdk<E, R>(
        service: &'static str,
        operation: &'static str,
        resource: &str,
        err: SdkError<E, R>,
    ) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let code: Option<Box<str>> = err.code().map(Into::into);
        // One line: the SDK's credential chain lists its attempts on
        // lines of their own, and a log line must stay one line.
        let message: Box<str> = err
            .message()
            .map(str::to_string)
            .unwrap_or_else(|| crate::error_chain(&err))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .into();
        let kind = match &err {
            _ if lacks_credentials(&err) => ErrorKind::Credentials,
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => ErrorKind::Transport,
            SdkError::ServiceError(_) => classify_code(code.as_deref()),
            _ => ErrorKind::Client,
        };
        AwsError {
            service,
            operation,
            resource: resource.into(),
            code,
            message,
            kind,
            source: Some(Arc::new(err)),
        }
    }

    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// The code for metrics: the service's, else the kind.
    pub fn code_or_kind(&self) -> &str {
        self.code.as_deref().unwrap_or(self.kind.name())
    }
}

/// Whether an error was caused by the credential chain finding nothing
/// (the SDK reports it as a dispatch failure whose source is a
/// [`CredentialsError`](aws_credential_types::provider::error::CredentialsError)).
fn lacks_credentials(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// A service error code's kind; `None` (an error page without a code, as
/// a 5xx from a proxy) counts as a server error.
pub fn classify_code(code: Option<&str>) -> ErrorKind {
    match code {
        None => ErrorKind::Server,
        Some(c) if THROTTLING.contains(&c) => ErrorKind::Throttled,
        Some(c) if SERVER.contains(&c) => ErrorKind::Server,
        Some(c) if c.contains("NotFound") || c == "NoSuchEntity" => ErrorKind::NotFound,
        Some(_) => ErrorKind::Client,
    }
}

/// How often and how patiently one call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first backoff; it doubles per attempt.
    pub base: Duration,
    /// No backoff is longer.
    pub max_delay: Duration,
    /// Whether throttled attempts are retried in place. Periodic reads say
    /// no: their own schedule is the retry, and it backs off, so a
    /// throttled caller never asks more often than it does in steady state.
    pub retry_throttled: bool,
}

impl RetryPolicy {
    pub const fn new(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            retry_throttled: true,
        }
    }

    /// The same, but a throttled attempt is not retried in place.
    pub const fn periodic(self) -> RetryPolicy {
        RetryPolicy {
            retry_throttled: false,
            ..self
        }
    }

    fn retries(&self, e: &AwsError, attempt: u32) -> bool {
        e.retryable()
            && attempt < self.attempts
            && (self.retry_throttled || e.kind != ErrorKind::Throttled)
    }

    /// The sleep before attempt `attempt + 1`: capped exponential backoff,
    /// half fixed and half jitter, so that agents throttled together do
    /// not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let backoff =
            (self.base * 2u32.saturating_pow(attempt.saturating_sub(1))).min(self.max_delay);
        backoff / 2 + jitter(backoff / 2)
    }
}

/// Calls `op` up to `policy.attempts` times while it fails with a retryable
/// error, sleeping [`RetryPolicy::delay`] in between; `on_retry` sees each
/// error that is retried.
pub async fn with_retries<T, F, Fut>(
    policy: RetryPolicy,
    mut on_retry: impl FnMut(&AwsError),
    mut op: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if policy.retries(&e, attempt) => {
                on_retry(&e);
                let delay = policy.delay(attempt);
                tracing::debug!(attempt, error = %e, "retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A duration in [0, max), from the clock's nanoseconds: enough spread for
/// backoff without a random number generator.
pub fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    max.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn throttled() -> AwsError {
        AwsError {
            code: Some("RequestLimitExceeded".into()),
            ..AwsError::new(
                "EC2",
                "DescribeInstances",
                "i-1",
                ErrorKind::Throttled,
                "slow down",
            )
        }
    }

    #[test]
    fn codes_are_classified() {
        assert_eq!(
            classify_code(Some("RequestLimitExceeded")),
            ErrorKind::Throttled
        );
        assert_eq!(classify_code(Some("InternalError")), ErrorKind::Server);
        assert_eq!(classify_code(None), ErrorKind::Server);
        assert_eq!(
            classify_code(Some("InvalidRouteTableID.NotFound")),
            ErrorKind::NotFound
        );
        assert_eq!(classify_code(Some("NoSuchEntity")), ErrorKind::NotFound);
        assert_eq!(
            classify_code(Some("UnauthorizedOperation")),
            ErrorKind::Client
        );
        assert!(!ErrorKind::NotFound.retryable() && ErrorKind::Transport.retryable());
    }

    /// As the SDK reports an empty credential chain (a dispatch failure
    /// whose connector error wraps the chain's `CredentialsError`),
    /// against a plain connection refusal.
    #[test]
    fn missing_credentials_are_their_own_kind_and_not_retried() {
        use aws_credential_types::provider::error::CredentialsError;
        use aws_smithy_runtime_api::client::result::ConnectorError;
        use aws_smithy_runtime_api::http::Response;
        type Sdk = SdkError<aws_smithy_types::error::ErrorMetadata, Response>;
        let no_creds: Sdk = SdkError::dispatch_failure(ConnectorError::other(
            Box::new(CredentialsError::not_loaded(
                "no credentials found in chain",
            )),
            None,
        ));
        let e = AwsError::from_sdk("EC2", "DescribeRouteTables", "vpc-1", no_creds);
        assert_eq!(e.kind, ErrorKind::Credentials);
        assert!(!e.retryable());
        assert_eq!(e.code_or_kind(), "credentials");
        let refused: Sdk = SdkError::dispatch_failure(ConnectorError::io(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )));
        let e = AwsError::from_sdk("EC2", "DescribeRouteTables", "vpc-1", refused);
        assert_eq!(e.kind, ErrorKind::Transport);
    }

    #[test]
    fn messages_name_service_call_and_resource() {
        let e = AwsError {
            code: Some("InvalidRouteTableID.NotFound".into()),
            ..AwsError::new(
                "EC2",
                "CreateRoute",
                "rtb-1",
                ErrorKind::NotFound,
                "no such table",
            )
        };
        assert_eq!(
            e.to_string(),
            "EC2 CreateRoute rtb-1: InvalidRouteTableID.NotFound: no such table"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::new(5);
        for attempt in 1..10 {
            let d = p.delay(attempt);
            let full = (p.base * 2u32.pow(attempt - 1)).min(p.max_delay);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?} of {full:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_then_gives_up() {
        let calls = Mutex::new(0);
        let mut seen = 0;
        let err = with_retries(
            RetryPolicy::new(3),
            |_| seen += 1,
            || async {
                *calls.lock().unwrap() += 1;
                Err::<(), _>(throttled())
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.code.as_deref(), Some("RequestLimitExceeded"));
        assert_eq!(*calls.lock().unwrap(), 3);
        assert_eq!(seen, 2, "two retries after the first attempt");

        *calls.lock().unwrap() = 0;
        let v = with_retries(
            RetryPolicy::new(5),
            |_| {},
            || async {
                let mut n = calls.lock().unwrap();
                *n += 1;
                if *n < 3 {
                    Err(throttled())
                } else {
                    Ok(*n)
                }
            },
        )
        .await;
        assert_eq!(v.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_calls_leave_throttling_to_their_schedule() {
        let calls = Mutex::new(0);
        let err = with_retries(
            RetryPolicy::new(5).periodic(),
            |_| {},
            || async {
                *calls.lock().unwrap() += 1;
                Err::<(), _>(throttled())
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Throttled);
        assert_eq!(
            *calls.lock().unwrap(),
            1,
            "no second attempt while throttled"
        );
        // Server errors are still retried.
        *calls.lock().unwrap() = 0;
        let _ = with_retries(
            RetryPolicy::new(3).periodic(),
            |_| {},
            || async {
                *calls.lock().unwrap() += 1;
                Err::<(), _>(AwsError::new(
                    "EC2",
                    "DescribeInstances",
                    "x",
                    ErrorKind::Server,
                    "500",
                ))
            },
        )
        .await;
        assert_eq!(*calls.lock().unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_are_not_retried() {
        let calls = Mutex::new(0);
        let _ = with_retries(
            RetryPolicy::new(5),
            |_| {},
            || async {
                *calls.lock().unwrap() += 1;
                Err::<(), _>(AwsError::new(
                    "EC2",
                    "CreateRoute",
                    "rtb-1",
                    ErrorKind::Client,
                    "bad",
                ))
            },
        )
        .await;
        assert_eq!(*calls.lock().unwrap(), 1);
    }
}
