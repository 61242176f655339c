//! One wrapping SDK HTTP client for every simulation: before a request leaves the process, a
//! [`Judge`] looks at it and gives a [`Verdict`]: send it on, answer it here with a synthetic
//! response, or send it and lose the response. The capacity model and the tests' fault
//! injector are both judges; the `HttpClient`/`HttpConnector` delegation lives only here.

use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_types::config_bag::ConfigBag;
use std::fmt;
use std::sync::Arc;

/// Decides, for each request the SDK sends, what happens to it.
pub trait Judge: fmt::Debug + Send + Sync + 'static {
    fn judge(&self, request: &HttpRequest) -> Verdict;
}

/// What happens to one request.
pub enum Verdict {
    /// Sent on untouched.
    Forward,
    /// Sent on; the guard is dropped when its response arrives (or the attempt is dropped),
    /// which is how the capacity model holds a transaction's items while it is in flight.
    ForwardHolding(Box<dyn Send>),
    /// Not sent: this is the answer.
    Answer(Box<HttpResponse>),
    /// Sent, and the server applies it; its response is then dropped and the SDK sees `error`.
    ForwardThenFail(ConnectorError),
}

/// `inner` with `judge` in front of it: give the result to the SDK's `http_client` setter
/// (`aws_config::ConfigLoader`, `SdkConfig::Builder`, `aws_sdk_dynamodb::Config`).
pub fn judged_client(judge: impl Judge, inner: SharedHttpClient) -> SharedHttpClient {
    SharedHttpClient::new(JudgedClient {
        judge: Arc::new(judge),
        inner,
    })
}

/// `sdk` with its HTTP client replaced by [`default_https_client`] behind `judge`; same
/// timeouts and endpoints.
pub fn judged_sdk_config(sdk: SdkConfig, judge: impl Judge) -> SdkConfig {
    sdk.into_builder()
        .http_client(judged_client(judge, default_https_client()))
        .build()
}

/// The HTTPS client the SDK uses when none is configured (hyper 1.x, rustls with aws-lc,
/// proxy settings from the environment), for wrapping with [`judged_client`].
pub fn default_https_client() -> SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    use aws_smithy_http_client::{Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut builder =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        builder.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            builder.set_sleep_impl(components.sleep_impl());
        }
        builder.set_proxy_config(Some(ProxyConfig::from_env()));
        builder.build()
    })
}

#[derive(Debug)]
struct JudgedClient {
    judge: Arc<dyn Judge>,
    inner: SharedHttpClient,
}

impl HttpClient for JudgedClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(JudgedConnector {
            judge: Arc::clone(&self.judge),
            inner: self.inner.http_connector(settings, components),
        })
    }

    fn validate_base_client_config(
        &self,
        runtime_components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.inner
            .validate_base_client_config(runtime_components, cfg)
    }

    fn validate_final_config(
        &self,
        runtime_components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.inner.validate_final_config(runtime_components, cfg)
    }

    fn connector_metadata(
        &self,
    ) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.inner.connector_metadata()
    }
}

#[derive(Debug)]
pub(crate) struct JudgedConnector {
    pub(crate) judge: Arc<dyn Judge>,
    pub(crate) inner: SharedHttpConnector,
}

impl HttpConnector for JudgedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        match self.judge.judge(&request) {
            Verdict::Forward => self.inner.call(request),
            Verdict::ForwardHolding(held) => {
                let response = self.inner.call(request);
                HttpConnectorFuture::new(async move {
                    let result = response.await;
                    drop(held);
                    result
                })
            }
            Verdict::Answer(response) => HttpConnectorFuture::ready(Ok(*response)),
            Verdict::ForwardThenFail(error) => {
                let sent = self.inner.call(request);
                HttpConnectorFuture::new(async move {
                    // The server applies the request and answers; the answer is lost.
                    let answer: Result<HttpResponse, ConnectorError> = sent.await;
                    drop(answer);
                    Err(error)
                })
            }
        }
    }
}
